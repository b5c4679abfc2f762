<?php
/*
 * MasterProxy.php: an fd-passing MasterProxy in PHP (sockets, sysvmsg, pcntl, posix).
 * It knows nothing of the adapter protocol: masterproxy.php runs it on the kit
 * (examples/php/fdpass_adapter.php), which calls its methods and answers for it.
 *
 * The shape of the seed's PHP MasterProxy, with each defect its reviews found fixed:
 * the queue is private (IPC_PRIVATE), 0600, kept and removed by its creator only;
 * the worker end of each socket pair stays open until the workers exist and then
 * leaves the master; every socket_sendmsg() result is checked; every error keeps
 * the errno of the call that failed and names that call. An idle token's message
 * type is the worker's index + 1, so a worker that got a connection without its
 * token (round-robin) can take the token back: it is busy now.
 */
declare(strict_types=1);

if (!defined('QUEUE_MODE')) {
    define('QUEUE_MODE', 0600);
}

function want_int(string $op, string $name, mixed $value): int
{
    if (!is_int($value)) {
        throw new FdpassError('TypeError', "$op: $name must be an int, got " . get_debug_type($value));
    }
    return $value;
}

class MasterProxy
{
    private int $owner;
    /** @var array<int, Socket> spl_object_id => listener returned by createSocket() */
    private array $listeners = [];
    private ?SysvMessageQueue $queue = null;
    /** @var array<int, ?Socket> */
    private array $masterEnds = [];
    /** @var array<int, ?Socket> */
    private array $workerEnds = [];
    private array $dead = [];
    private int $next = 0;
    // worker side
    private ?Socket $chan = null;
    private bool $tokenOut = false;
    /** @var array<int, Socket> spl_object_id => connection its caller has not released yet */
    private array $held = [];

    public function __construct()
    {
        $this->owner = getmypid();
    }

    public function isSupported(): bool
    {
        return function_exists('msg_get_queue') && function_exists('pcntl_fork');
    }

    private function isWorker(): bool
    {
        return Fdpass::workerIndex() !== null;
    }

    public function createSocket(mixed $port, mixed $protocol): Socket
    {
        $port = want_int('create_socket', 'port', $port);
        if ($port < 0 || $port > 65535) {
            throw new FdpassError('ValueError', "create_socket: port $port is outside 0..65535");
        }
        if (!in_array($protocol, ['tcp', 'http', 'websocket'], true)) {
            throw new FdpassError('ValueError', 'create_socket: unknown protocol ' . json_encode($protocol)
                . '; expected tcp, http or websocket');
        }
        $this->masterOnly('create_socket');
        $sock = socket_create(AF_INET, SOCK_STREAM, SOL_TCP);
        if ($sock === false) {
            throw FdpassError::os(socket_last_error(), 'create_socket: socket() failed');
        }
        $step = 'setsockopt(SO_REUSEADDR)';
        $ok = socket_set_option($sock, SOL_SOCKET, SO_REUSEADDR, 1);
        if ($ok) {
            $step = "bind(127.0.0.1:$port)";
            $ok = socket_bind($sock, '127.0.0.1', $port);
        }
        if ($ok) {
            $step = 'listen()';
            $ok = socket_listen($sock, SOMAXCONN);
        }
        if (!$ok) {
            $errno = socket_last_error($sock);
            socket_close($sock);
            throw FdpassError::os($errno, "create_socket: $step failed");
        }
        // PHP cannot set FD_CLOEXEC; the kit's copy received with MSG_CMSG_CLOEXEC has it.
        $listener = Fdpass::cloexec($sock);
        $this->listeners[spl_object_id($listener)] = $listener;
        return $listener;
    }

    public function openChannels(mixed $workers): void
    {
        $workers = want_int('open_channels', 'workers', $workers);
        if ($workers < 1 || $workers > 64) {
            throw new FdpassError('ValueError', "open_channels: workers must be within 1..64, got $workers");
        }
        $this->masterOnly('open_channels');
        if ($this->masterEnds) {
            throw FdpassError::os(SOCKET_EINVAL, 'open_channels: channels are already open');
        }
        $warning = '';
        set_error_handler(function (int $no, string $text) use (&$warning): bool {
            $warning = $text;
            return true;
        });
        try {
            // Key 0 is IPC_PRIVATE: a new queue that no other instance can find.
            $queue = msg_get_queue(0, QUEUE_MODE);
        } finally {
            restore_error_handler();
        }
        if ($queue === false) {
            throw FdpassError::os(Fdpass::errnoFromText($warning, SOCKET_EIO), 'open_channels: msgget() of the idle queue failed');
        }
        // PHP's msgget(IPC_PRIVATE, 0) ignores the mode: set it, or nobody but root may use it.
        if (!msg_set_queue($queue, ['msg_perm.mode' => QUEUE_MODE])) {
            msg_remove_queue($queue);
            throw FdpassError::os(SOCKET_EPERM, 'open_channels: msgctl(IPC_SET) of the idle queue failed');
        }
        $masters = $ends = [];
        for ($i = 0; $i < $workers; $i++) {
            $pair = [];
            if (!socket_create_pair(AF_UNIX, SOCK_SEQPACKET, 0, $pair)) {
                $errno = socket_last_error();
                foreach ([...$masters, ...$ends] as $sock) {
                    socket_close($sock);
                }
                msg_remove_queue($queue);
                throw FdpassError::os($errno, "open_channels: socketpair() for worker $i failed");
            }
            [$masters[$i], $ends[$i]] = $pair;
        }
        $this->queue = $queue;
        $this->masterEnds = $masters;
        $this->workerEnds = $ends;
        $this->dead = [];
        $this->next = 0;
    }

    public function dispatch(?Socket $sock, mixed $timeout): int
    {
        $this->masterOnly('dispatch');
        if (!$this->masterEnds) {
            throw FdpassError::os(SOCKET_EINVAL, 'dispatch: call create_socket() and open_channels() first');
        }
        if ($sock === null || !isset($this->listeners[spl_object_id($sock)])) {
            throw FdpassError::os(SOCKET_EBADF, 'dispatch: the listener is not open in the master');
        }
        if ($timeout !== null && !is_int($timeout) && !is_float($timeout)) {
            throw new FdpassError('TypeError', 'dispatch: timeout must be a number or None');
        }
        // From the first dispatch on the master holds no worker end: a dead worker's
        // channel then reports EPIPE instead of swallowing fds.
        foreach ($this->workerEnds as $i => $end) {
            if ($end !== null) {
                socket_close($end);
                $this->workerEnds[$i] = null;
            }
        }
        $deadline = $timeout === null ? null : microtime(true) + max(0.0, (float)$timeout);
        if (!Fdpass::waitReadable([$sock], $deadline)) {
            throw new FdpassError('TimeoutError', "dispatch: no connection within {$timeout}s", SOCKET_ETIMEDOUT);
        }
        $conn = @socket_accept($sock);
        if ($conn === false) {
            // socket_accept() records the errno globally, not on the listener.
            throw FdpassError::os(socket_last_error(), 'dispatch: accept() failed');
        }
        try {
            return $this->handOver($conn, $deadline);
        } finally {
            socket_close($conn); // the worker has its own copy now, or nobody gets one
        }
    }

    private function wait(?float $deadline): array
    {
        if ($deadline === null) {
            return [null, 0];
        }
        $left = max(0.0, $deadline - microtime(true));
        return [(int)$left, (int)(($left - (int)$left) * 1e6)];
    }

    private function handOver(Socket $conn, ?float $deadline): int
    {
        $busy = [];
        while (true) {
            [$i, $viaToken] = $this->pick($busy);
            if ($i === null) {
                $full = array_values(array_filter(
                    array_map(fn ($k) => $this->masterEnds[$k], array_keys($busy)),
                ));
                if (!$full) {
                    throw FdpassError::os(SOCKET_EPIPE, 'dispatch: no live worker (all '
                        . count($this->masterEnds) . ' channels are closed); connection closed');
                }
                $read = $except = null;
                [$sec, $usec] = $this->wait($deadline);
                if (@socket_select($read, $full, $except, $sec, $usec) === 0) {
                    throw new FdpassError('TimeoutError', "dispatch: every live worker's channel stayed full", SOCKET_ETIMEDOUT);
                }
                $busy = [];
                continue;
            }
            $message = ['iov' => [$viaToken ? 'T' : 'R'], 'control' => Fdpass::rights($conn)];
            if (@socket_sendmsg($this->masterEnds[$i], $message, MSG_DONTWAIT | MSG_NOSIGNAL) !== false) {
                return $i;
            }
            $errno = socket_last_error($this->masterEnds[$i]);
            if ($errno === SOCKET_EINTR) {
                continue;
            }
            if ($errno === SOCKET_EAGAIN) {
                $busy[$i] = true;
                if ($viaToken) {
                    $this->postToken($i); // give the worker its place back
                }
                continue;
            }
            if (in_array($errno, [SOCKET_EPIPE, SOCKET_ECONNREFUSED, SOCKET_ECONNRESET], true)) {
                $this->dead[$i] = true; // route around a dead worker
                continue;
            }
            throw FdpassError::os($errno, "dispatch: sendmsg() to worker $i failed");
        }
    }

    /** An idle worker from the queue, else the next live one round-robin: [index, via token]. */
    private function pick(array $busy): array
    {
        $deferred = [];
        $found = null;
        while ($this->queue !== null) {
            $type = $errno = 0;
            $msg = '';
            if (!@msg_receive($this->queue, 0, $type, 16, $msg, false, MSG_IPC_NOWAIT, $errno)) {
                if ($errno === SOCKET_EINTR) {
                    continue;
                }
                if ($errno === SOCKET_EIDRM || $errno === SOCKET_EINVAL) {
                    $this->queue = null; // removed from outside: serve without tokens
                }
                break; // ENOMSG: nobody is idle
            }
            $i = $type - 1;
            if (!isset($this->masterEnds[$i]) || isset($this->dead[$i])) {
                continue; // a stale token of a dead worker
            }
            if (isset($busy[$i])) {
                $deferred[] = $i;
                continue;
            }
            $found = [$i, true];
            break;
        }
        foreach ($deferred as $i) {
            $this->postToken($i);
        }
        if ($found !== null) {
            return $found;
        }
        $n = count($this->masterEnds);
        for ($k = 0; $k < $n; $k++) {
            $i = ($this->next + $k) % $n;
            if (!isset($this->dead[$i]) && !isset($busy[$i])) {
                $this->next = $i + 1;
                return [$i, false];
            }
        }
        return [null, false];
    }

    /** An idle token; a full or vanished queue costs only the preference. */
    private function postToken(int $i): bool
    {
        while ($this->queue !== null) {
            $errno = 0;
            if (@msg_send($this->queue, $i + 1, (string)$i, false, false, $errno)) {
                return true;
            }
            if ($errno === SOCKET_EINTR) {
                continue;
            }
            if ($errno === SOCKET_EIDRM || $errno === SOCKET_EINVAL) {
                $this->queue = null;
            }
            return false;
        }
        return false;
    }

    public function enterWorker(mixed $index): void
    {
        $index = want_int('enter_worker', 'index', $index);
        if (!$this->workerEnds && !$this->masterEnds) {
            throw FdpassError::os(SOCKET_EINVAL, 'enter_worker: call open_channels() first');
        }
        if (!array_key_exists($index, $this->masterEnds)) {
            throw new FdpassError('ValueError', "enter_worker: index $index outside 0.." . (count($this->masterEnds) - 1));
        }
        if (!$this->isWorker()) {
            throw FdpassError::os(SOCKET_EINVAL, 'enter_worker: this is the master; call it in a forked worker');
        }
        if ($index !== Fdpass::workerIndex() || $this->chan !== null) {
            throw FdpassError::os(SOCKET_EINVAL, "enter_worker($index): this process is worker " . Fdpass::workerIndex());
        }
        // Keep this worker's end; drop everything else the fork duplicated.
        $this->chan = $this->workerEnds[$index];
        $this->workerEnds[$index] = null;
        foreach ([...$this->workerEnds, ...$this->masterEnds, ...$this->listeners] as $sock) {
            if ($sock !== null) {
                socket_close($sock);
            }
        }
        $this->workerEnds = $this->masterEnds = $this->listeners = [];
        $this->tokenOut = $this->postToken($index); // idle from now on
    }

    public function accept(?Socket $listener): Socket
    {
        if ($this->chan === null) {
            throw FdpassError::os(SOCKET_EINVAL, 'accept: call enter_worker() first');
        }
        $index = (int)Fdpass::workerIndex();
        if (!$this->tokenOut) {
            $this->tokenOut = $this->postToken($index);
        }
        Fdpass::waitReadable([$this->chan]); // a connection, or the adapter's end (we exit)
        $msg = ['buffer_size' => 1, 'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 4)];
        do {
            $n = @socket_recvmsg($this->chan, $msg, MSG_CMSG_CLOEXEC);
            $errno = $n === false ? socket_last_error($this->chan) : 0;
        } while ($errno === SOCKET_EINTR);
        if ($n === false) {
            throw FdpassError::os($errno, 'accept: recvmsg() on the channel failed');
        }
        $fds = [];
        foreach ($msg['control'] ?? [] as $c) {
            if ($c['level'] === SOL_SOCKET && $c['type'] === SCM_RIGHTS) {
                $fds = [...$fds, ...$c['data']];
            }
        }
        if ($msg['flags'] & MSG_CTRUNC) {
            array_map('socket_close', array_filter($fds, fn ($s) => $s instanceof Socket));
            throw FdpassError::os(SOCKET_EMFILE, 'accept: recvmsg() truncated the passed fd (MSG_CTRUNC), '
                . "the worker's fd table is full; the connection was dropped");
        }
        $tag = $msg['iov'][0] ?? '';
        if ($n === 0 && !$fds) {
            throw new FdpassError('EOFError', 'accept: the master closed the channel');
        }
        if (count($fds) !== 1 || !$fds[0] instanceof Socket) {
            array_map('socket_close', array_filter($fds, fn ($s) => $s instanceof Socket));
            throw FdpassError::os(SOCKET_EBADMSG, 'accept: expected 1 socket from the master, got ' . count($fds));
        }
        if ($tag === 'T') {
            $this->tokenOut = false; // the master used this worker's token
        } elseif ($this->tokenOut && $this->queue !== null) {
            // Sent round-robin: take our token back, we are busy now. If it is gone, the
            // master took it meanwhile and a connection with it is on its way.
            $type = $errno = 0;
            $msg = '';
            @msg_receive($this->queue, $index + 1, $type, 16, $msg, false, MSG_IPC_NOWAIT, $errno);
            $this->tokenOut = false;
        }
        $this->held[spl_object_id($fds[0])] = $fds[0];
        return $fds[0];
    }

    /** The caller is done with a socket this proxy returned. */
    public function release(Socket $sock): void
    {
        unset($this->held[spl_object_id($sock)], $this->listeners[spl_object_id($sock)]);
        socket_close($sock);
        if ($this->chan !== null && !$this->held && !$this->tokenOut) {
            $this->tokenOut = $this->postToken((int)Fdpass::workerIndex()); // done: idle again
        }
    }

    public function close(): void
    {
        foreach ([...$this->listeners, ...$this->masterEnds, ...$this->workerEnds, ...$this->held, $this->chan] as $sock) {
            if ($sock !== null) {
                socket_close($sock);
            }
        }
        $this->listeners = $this->masterEnds = $this->workerEnds = $this->held = [];
        $this->chan = null;
        if ($this->queue !== null && !$this->isWorker() && getmypid() === $this->owner) {
            msg_remove_queue($this->queue); // false if removed from outside: fine
        }
        $this->queue = null; // a worker never removes or changes the master's queue
    }

    private function masterOnly(string $op): void
    {
        if ($this->isWorker()) {
            throw FdpassError::os(SOCKET_EINVAL, "$op: not allowed in worker " . Fdpass::workerIndex());
        }
    }
}

