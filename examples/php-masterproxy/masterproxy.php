<?php
/*
 * masterproxy.php: an fd-passing MasterProxy in PHP (sockets, sysvmsg, pcntl, posix),
 * behind the fdpass adapter protocol 1 (docs/adapter.md).
 *
 * The shape of the seed's PHP MasterProxy, with each defect its reviews found fixed:
 * the queue is private (IPC_PRIVATE), 0600, kept and removed by its creator only;
 * the worker end of each socket pair stays open until the workers exist and then
 * leaves the master; every socket_sendmsg() result is checked; every error keeps
 * the errno of the call that failed and names that call. An idle token's message
 * type is the worker's index + 1, so a worker that got a connection without its
 * token (round-robin) can take the token back: it is busy now.
 *
 *   pytest --fdpass-impl="exec:php examples/php-masterproxy/masterproxy.php"
 *
 * masterproxy-broken.php is the broken twin: the seed's 0666 queue (fails IPC-05).
 */
declare(strict_types=1);

const PROTOCOL = 1;
const MAX_LINE = 65536;
if (!defined('QUEUE_MODE')) {
    define('QUEUE_MODE', 0600);
}

/** An error reply: kind is OSError, TimeoutError, EOFError, ValueError, TypeError, ... */
final class Fail extends Exception
{
    public function __construct(public string $kind, string $message, public ?int $errno = null)
    {
        parent::__construct($message);
    }

    public static function os(int $errno, string $what): self
    {
        return new self('OSError', "$what: " . socket_strerror($errno), $errno);
    }
}

/** The errno behind a warning text (msg_get_queue() reports strerror(), not the errno). */
function errno_from_text(string $text, int $default): int
{
    for ($e = 1; $e < 200; $e++) {
        if (str_ends_with($text, posix_strerror($e))) {
            return $e;
        }
    }
    return $default;
}

/** fd number => /proc link of every socket this process holds. */
function socket_fds(): array
{
    $table = [];
    foreach (scandir('/proc/self/fd') as $name) {
        if (ctype_digit($name)) {
            $link = @readlink("/proc/self/fd/$name");
            if ($link !== false && str_starts_with($link, 'socket:')) {
                $table[(int)$name] = $link;
            }
        }
    }
    return $table;
}

/** The fd number of the one socket opened since $before was taken. */
function new_fd(array $before): int
{
    $new = array_diff_assoc(socket_fds(), $before);
    if (count($new) !== 1) {
        throw Fail::os(SOCKET_EBADFD, 'cannot tell the fd number of a new socket');
    }
    return array_key_first($new);
}

function want_int(string $op, string $name, mixed $value): int
{
    if (!is_int($value)) {
        throw new Fail('TypeError', "$op: $name must be an int, got " . get_debug_type($value));
    }
    return $value;
}

/** SCM_RIGHTS control data carrying $sock. PHP 8.2's socket_sendmsg() sends fd 0 for a
 * Socket object in the data (checked on 8.2.32); the socket's stream carries the real fd. */
function rights(Socket $sock): array
{
    return [['level' => SOL_SOCKET, 'type' => SCM_RIGHTS, 'data' => [socket_export_stream($sock)]]];
}

class MasterProxy
{
    private int $owner;
    /** @var array<int, Socket> fd number => listener returned by create_socket */
    private array $listeners = [];
    private ?SysvMessageQueue $queue = null;
    /** @var array<int, ?Socket> */
    private array $masterEnds = [];
    /** @var array<int, ?Socket> */
    private array $workerEnds = [];
    private array $dead = [];
    private int $next = 0;
    // worker side
    private ?int $index = null;
    private ?Socket $chan = null;
    private bool $tokenOut = false;
    /** @var array<int, Socket> fd number => connection not yet released to the adapter */
    private array $held = [];

    public function __construct(private Adapter $adapter)
    {
        $this->owner = getmypid();
    }

    public function isWorker(): bool
    {
        return $this->index !== null;
    }

    public function createSocket(mixed $port, mixed $protocol): array
    {
        $port = want_int('create_socket', 'port', $port);
        if ($port < 0 || $port > 65535) {
            throw new Fail('ValueError', "create_socket: port $port is outside 0..65535");
        }
        if (!in_array($protocol, ['tcp', 'http', 'websocket'], true)) {
            throw new Fail('ValueError', 'create_socket: unknown protocol ' . json_encode($protocol)
                . '; expected tcp, http or websocket');
        }
        $this->masterOnly('create_socket');
        $before = socket_fds();
        $sock = socket_create(AF_INET, SOCK_STREAM, SOL_TCP);
        if ($sock === false) {
            throw Fail::os(socket_last_error(), 'create_socket: socket() failed');
        }
        try {
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
                throw Fail::os(socket_last_error($sock), "create_socket: $step failed");
            }
            $listener = $this->cloexecCopy($sock);
        } finally {
            socket_close($sock);
        }
        $fd = new_fd($before);
        $this->listeners[$fd] = $listener;
        return ['fd' => $fd, 'socket' => $listener];
    }

    /** PHP cannot set FD_CLOEXEC; a copy received with MSG_CMSG_CLOEXEC has it. */
    private function cloexecCopy(Socket $sock): Socket
    {
        $pair = [];
        if (!socket_create_pair(AF_UNIX, SOCK_SEQPACKET, 0, $pair)) {
            throw Fail::os(socket_last_error(), 'create_socket: socketpair() for FD_CLOEXEC failed');
        }
        try {
            if (socket_sendmsg($pair[0], ['iov' => ['L'], 'control' => rights($sock)], 0) === false) {
                throw Fail::os(socket_last_error($pair[0]), 'create_socket: sendmsg() to self failed');
            }
            $msg = ['buffer_size' => 1, 'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 1)];
            if (socket_recvmsg($pair[1], $msg, MSG_CMSG_CLOEXEC) === false) {
                throw Fail::os(socket_last_error($pair[1]), 'create_socket: recvmsg() from self failed');
            }
            $copy = $msg['control'][0]['data'][0] ?? null;
            if (!$copy instanceof Socket) {
                throw Fail::os(SOCKET_EMFILE, 'create_socket: recvmsg() from self brought no fd');
            }
            return $copy;
        } finally {
            socket_close($pair[0]);
            socket_close($pair[1]);
        }
    }

    public function openChannels(mixed $workers): void
    {
        $workers = want_int('open_channels', 'workers', $workers);
        if ($workers < 1 || $workers > 64) {
            throw new Fail('ValueError', "open_channels: workers must be within 1..64, got $workers");
        }
        $this->masterOnly('open_channels');
        if ($this->masterEnds) {
            throw Fail::os(SOCKET_EINVAL, 'open_channels: channels are already open');
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
            throw Fail::os(errno_from_text($warning, SOCKET_EIO), 'open_channels: msgget() of the idle queue failed');
        }
        // PHP's msgget(IPC_PRIVATE, 0) ignores the mode: set it, or nobody but root may use it.
        if (!msg_set_queue($queue, ['msg_perm.mode' => QUEUE_MODE])) {
            msg_remove_queue($queue);
            throw Fail::os(SOCKET_EPERM, 'open_channels: msgctl(IPC_SET) of the idle queue failed');
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
                throw Fail::os($errno, "open_channels: socketpair() for worker $i failed");
            }
            [$masters[$i], $ends[$i]] = $pair;
        }
        $this->queue = $queue;
        $this->masterEnds = $masters;
        $this->workerEnds = $ends;
        $this->dead = [];
        $this->next = 0;
    }

    public function forkWorker(mixed $index): int
    {
        $index = want_int('fork_worker', 'index', $index);
        $this->masterOnly('fork_worker');
        if (!$this->masterEnds) {
            throw Fail::os(SOCKET_EINVAL, 'fork_worker: call open_channels() first');
        }
        if (!isset($this->masterEnds[$index])) {
            throw new Fail('ValueError', "fork_worker: index $index outside 0.." . (count($this->masterEnds) - 1));
        }
        $pid = pcntl_fork();
        if ($pid < 0) {
            throw Fail::os(pcntl_get_last_error(), 'fork_worker: fork() failed');
        }
        if ($pid === 0) {
            $this->index = $index;
            $this->adapter->becomeWorker($index);
            exit(0);
        }
        return $pid;
    }

    public function dispatch(mixed $listener, mixed $timeout): int
    {
        $this->masterOnly('dispatch');
        if (!$this->masterEnds) {
            throw Fail::os(SOCKET_EINVAL, 'dispatch: call create_socket() and open_channels() first');
        }
        $sock = is_int($listener) ? ($this->listeners[$listener] ?? null) : null;
        if ($sock === null) {
            throw Fail::os(SOCKET_EBADF, 'dispatch: the listener is not open in the master');
        }
        if ($timeout !== null && !is_int($timeout) && !is_float($timeout)) {
            throw new Fail('TypeError', 'dispatch: timeout must be a number or None');
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
        while (true) {
            $read = [$sock];
            $write = $except = null;
            [$sec, $usec] = $this->wait($deadline);
            $ready = @socket_select($read, $write, $except, $sec, $usec);
            if ($ready === false) {
                $errno = socket_last_error();
                if ($errno === SOCKET_EINTR) {
                    continue;
                }
                throw Fail::os($errno, 'dispatch: select() on the listener failed');
            }
            if ($ready > 0) {
                break;
            }
            if ($deadline !== null && microtime(true) >= $deadline) {
                throw new Fail('TimeoutError', "dispatch: no connection within {$timeout}s", SOCKET_ETIMEDOUT);
            }
        }
        $conn = @socket_accept($sock);
        if ($conn === false) {
            // socket_accept() records the errno globally, not on the listener.
            throw Fail::os(socket_last_error(), 'dispatch: accept() failed');
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
                    throw Fail::os(SOCKET_EPIPE, 'dispatch: no live worker (all '
                        . count($this->masterEnds) . ' channels are closed); connection closed');
                }
                $read = $except = null;
                [$sec, $usec] = $this->wait($deadline);
                if (@socket_select($read, $full, $except, $sec, $usec) === 0) {
                    throw new Fail('TimeoutError', "dispatch: every live worker's channel stayed full", SOCKET_ETIMEDOUT);
                }
                $busy = [];
                continue;
            }
            $message = ['iov' => [$viaToken ? 'T' : 'R'], 'control' => rights($conn)];
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
            throw Fail::os($errno, "dispatch: sendmsg() to worker $i failed");
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
            throw Fail::os(SOCKET_EINVAL, 'enter_worker: call open_channels() first');
        }
        if (!array_key_exists($index, $this->masterEnds)) {
            throw new Fail('ValueError', "enter_worker: index $index outside 0.." . (count($this->masterEnds) - 1));
        }
        if (!$this->isWorker()) {
            throw Fail::os(SOCKET_EINVAL, 'enter_worker: this is the master; call it in a forked worker');
        }
        if ($index !== $this->index || $this->chan !== null) {
            throw Fail::os(SOCKET_EINVAL, "enter_worker($index): this process is worker {$this->index}");
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

    public function accept(Socket $ctl): array
    {
        if ($this->chan === null) {
            throw Fail::os(SOCKET_EINVAL, 'accept: call enter_worker() first');
        }
        if (!$this->tokenOut) {
            $this->tokenOut = $this->postToken($this->index);
        }
        while (true) { // wait for a connection; leave if the adapter goes away meanwhile
            $read = [$this->chan, $ctl];
            $write = $except = null;
            if (@socket_select($read, $write, $except, null) === false) {
                $errno = socket_last_error();
                if ($errno === SOCKET_EINTR) {
                    continue;
                }
                throw Fail::os($errno, 'accept: select() failed');
            }
            if (in_array($ctl, $read, true)) {
                $peek = '';
                if (@socket_recv($ctl, $peek, 1, MSG_PEEK | MSG_DONTWAIT) === 0) {
                    exit(0);
                }
            }
            if (in_array($this->chan, $read, true)) {
                break;
            }
        }
        $before = socket_fds();
        $msg = ['buffer_size' => 1, 'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 4)];
        do {
            $n = @socket_recvmsg($this->chan, $msg, MSG_CMSG_CLOEXEC);
            $errno = $n === false ? socket_last_error($this->chan) : 0;
        } while ($errno === SOCKET_EINTR);
        if ($n === false) {
            throw Fail::os($errno, 'accept: recvmsg() on the channel failed');
        }
        $fds = [];
        foreach ($msg['control'] ?? [] as $c) {
            if ($c['level'] === SOL_SOCKET && $c['type'] === SCM_RIGHTS) {
                $fds = [...$fds, ...$c['data']];
            }
        }
        if ($msg['flags'] & MSG_CTRUNC) {
            array_map('socket_close', array_filter($fds, fn ($s) => $s instanceof Socket));
            throw Fail::os(SOCKET_EMFILE, 'accept: recvmsg() truncated the passed fd (MSG_CTRUNC), '
                . "the worker's fd table is full; the connection was dropped");
        }
        $tag = $msg['iov'][0] ?? '';
        if ($n === 0 && !$fds) {
            throw new Fail('EOFError', 'accept: the master closed the channel');
        }
        if (count($fds) !== 1 || !$fds[0] instanceof Socket) {
            array_map('socket_close', array_filter($fds, fn ($s) => $s instanceof Socket));
            throw Fail::os(SOCKET_EBADMSG, 'accept: expected 1 socket from the master, got ' . count($fds));
        }
        if ($tag === 'T') {
            $this->tokenOut = false; // the master used this worker's token
        } elseif ($this->tokenOut && $this->queue !== null) {
            // Sent round-robin: take our token back, we are busy now. If it is gone, the
            // master took it meanwhile and a connection with it is on its way.
            $type = $errno = 0;
            $msg = '';
            @msg_receive($this->queue, $this->index + 1, $type, 16, $msg, false, MSG_IPC_NOWAIT, $errno);
            $this->tokenOut = false;
        }
        $fd = new_fd($before);
        $this->held[$fd] = $fds[0];
        return ['fd' => $fd, 'socket' => $fds[0]];
    }

    public function release(mixed $fd): void
    {
        $fd = want_int('release', 'fd', $fd);
        if ($this->isWorker()) {
            $table = &$this->held;
        } else {
            $table = &$this->listeners;
        }
        if (!isset($table[$fd])) {
            throw Fail::os(SOCKET_EBADF, "release: fd $fd was not handed out by this process");
        }
        socket_close($table[$fd]);
        unset($table[$fd]);
        if ($this->chan !== null && !$this->held && !$this->tokenOut) {
            $this->tokenOut = $this->postToken($this->index); // done with it: idle again
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
            throw Fail::os(SOCKET_EINVAL, "$op: not allowed in worker {$this->index}");
        }
    }
}

/** The control connection: one request line in, one reply line out. */
class Adapter
{
    private Socket $ctl;
    private string $buffer = '';
    private MasterProxy $proxy;

    public function __construct()
    {
        $this->proxy = new MasterProxy($this);
    }

    public function run(): int
    {
        $this->connect(['role' => 'master', 'pid' => getmypid(), 'language' => 'php',
            'name' => 'php-masterproxy', 'capabilities' => ['fd-passing']]);
        $this->serve(true);
        return 0;
    }

    public function becomeWorker(int $index): void
    {
        socket_close($this->ctl); // the master's connection is the master's alone
        $this->buffer = '';
        $this->connect(['role' => 'worker', 'index' => $index, 'pid' => getmypid()]);
        $this->serve(false);
    }

    private function connect(array $hello): void
    {
        $path = getenv('FDPASS_ADAPTER_SOCKET');
        if ($path === false) {
            fwrite(STDERR, "masterproxy.php: FDPASS_ADAPTER_SOCKET is not set (run me through "
                . "the fdpass adapter: pytest --fdpass-impl=exec:...)\n");
            exit(2);
        }
        $ctl = socket_create(AF_UNIX, SOCK_STREAM, 0);
        if ($ctl === false || !socket_connect($ctl, $path)) {
            fwrite(STDERR, "masterproxy.php: connect($path) failed\n");
            exit(2);
        }
        $this->ctl = $ctl;
        $this->send(json_encode(['hello' => ['protocol' => PROTOCOL] + $hello]));
        $reply = json_decode($this->readLine() ?? '', true);
        if (($reply['ok'] ?? false) !== true) {
            fwrite(STDERR, "masterproxy.php: the adapter refused the hello\n");
            exit(2);
        }
    }

    private function serve(bool $master): void
    {
        while (($line = $this->readLine()) !== null) {
            if ($master) {
                while (pcntl_waitpid(-1, $status, WNOHANG) > 0) {
                    // reap workers that ended
                }
            }
            $this->handle($line);
        }
    }

    private function handle(string $line): void
    {
        $rq = json_decode($line, true);
        $p = $this->proxy;
        try {
            if (!is_array($rq) || !is_string($rq['op'] ?? null)) {
                throw new Fail('ValueError', 'not a request: ' . substr($line, 0, 60));
            }
            $result = match ($rq['op']) {
                'is_supported' => true,
                'create_socket' => $p->createSocket($rq['port'] ?? null, $rq['protocol'] ?? 'tcp'),
                'open_channels' => $p->openChannels($rq['workers'] ?? null),
                'fork_worker' => ['pid' => $p->forkWorker($rq['index'] ?? null)],
                'dispatch' => $p->dispatch($rq['listener'] ?? null, $rq['timeout'] ?? null),
                'enter_worker' => $p->enterWorker($rq['index'] ?? null),
                'accept' => $p->accept($this->ctl),
                'release' => $p->release($rq['fd'] ?? null),
                'close' => $p->close(),
                default => throw new Fail('ValueError', 'unknown op ' . json_encode($rq['op'])),
            };
        } catch (Fail $f) {
            $error = ['ok' => false, 'error' => $f->kind, 'message' => $f->getMessage()];
            if ($f->errno !== null) {
                $error['errno'] = $f->errno;
            }
            $this->send(json_encode($error));
            return;
        }
        if (is_array($result) && isset($result['socket'])) {
            $this->send(json_encode(['ok' => true, 'result' => ['fd' => $result['fd']]]), $result['socket']);
            return;
        }
        $this->send(json_encode(['ok' => true, 'result' => $result]));
    }

    private function readLine(): ?string
    {
        while (($nl = strpos($this->buffer, "\n")) === false) {
            $chunk = '';
            $n = @socket_recv($this->ctl, $chunk, MAX_LINE, 0);
            if ($n === false && socket_last_error($this->ctl) === SOCKET_EINTR) {
                continue;
            }
            if (!$n) {
                return null; // EOF: the adapter is done with us
            }
            $this->buffer .= $chunk;
        }
        $line = substr($this->buffer, 0, $nl);
        $this->buffer = substr($this->buffer, $nl + 1);
        return $line;
    }

    /** A reply line; a socket travels with it as SCM_RIGHTS. Plain replies use send(),
     * so that syscall faults injected into sendmsg hit only the data path. */
    private function send(string $line, ?Socket $sock = null): void
    {
        $line .= "\n";
        if ($sock !== null) {
            if (@socket_sendmsg($this->ctl, ['iov' => [$line], 'control' => rights($sock)], MSG_NOSIGNAL) === false) {
                exit(0); // the adapter is gone
            }
            return;
        }
        while ($line !== '') {
            $n = @socket_send($this->ctl, $line, strlen($line), MSG_NOSIGNAL);
            if ($n === false && socket_last_error($this->ctl) === SOCKET_EINTR) {
                continue;
            }
            if (!$n) {
                exit(0);
            }
            $line = substr($line, $n);
        }
    }
}

exit((new Adapter())->run());
