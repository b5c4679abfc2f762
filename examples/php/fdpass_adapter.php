<?php
/*
 * fdpass_adapter.php: the fdpass adapter protocol 2 (docs/adapter.md) for a PHP proxy,
 * in one file. It does everything that is about the protocol and nothing about the
 * proxy: connecting to $FDPASS_ADAPTER_SOCKET, hello, the request loop, fd numbers,
 * sockets passed with SCM_RIGHTS, error replies (with the errno where PHP has one),
 * forking workers and reaping them, and waiting on a socket and the control
 * connection at once, so that a process blocked for a connection still ends when
 * the adapter goes away.
 *
 *   require __DIR__ . '/fdpass_adapter.php';
 *   exit(Fdpass::run(new MyProxy(), 'my-proxy', 'fd-passing'));
 *
 * The proxy is any object with these methods (the contract's, camel-cased). The kit
 * calls a method only when the contract does; a method the object lacks is answered
 * with the error kind "unsupported" (the requirements that need it are blocked/n-a).
 *
 *   isSupported(): bool
 *   createSocket(mixed $port, mixed $protocol): Socket         master
 *   openChannels(mixed $workers): void                         master, fd-passing
 *   enterWorker(mixed $index): void                            worker, fd-passing
 *   dispatch(?Socket $listener, mixed $timeout): int           master, fd-passing
 *   accept(?Socket $listener): Socket                          worker
 *   close(): void                                              master or worker
 *   release(Socket $socket): void    optional: the adapter is done with a socket the
 *                                    proxy returned; default socket_close()
 *
 * Arguments arrive as JSON gave them (validating them is the proxy's job); $listener
 * is the proxy's own Socket, or null for a listener this process never returned.
 * Throw FdpassError to answer with an error kind; PHP's \ValueError and a \TypeError
 * of the arguments the kit passed are answered as ValueError and TypeError; any
 * other \Error is a bug in the program (kind "internal"); any other exception is an
 * OSError without errno (say which errno with FdpassError::os()).
 */
declare(strict_types=1);

/** An error reply: kind is OSError, TimeoutError, EOFError, ValueError, TypeError, ... */
class FdpassError extends Exception
{
    public function __construct(public string $kind, string $message, public ?int $errno = null)
    {
        parent::__construct($message);
    }

    /** OSError with $errno; the message is "$what: strerror(errno)". */
    public static function os(int $errno, string $what): self
    {
        return new self('OSError', "$what: " . socket_strerror($errno), $errno);
    }

    /** OSError with the errno of the last failed call of the sockets extension; without
     * errno if there is none (an errno is never made up). */
    public static function socket(?Socket $sock, string $what): self
    {
        $errno = $sock === null ? socket_last_error() : socket_last_error($sock);
        return $errno ? self::os($errno, $what) : new self('OSError', $what);
    }
}

final class Fdpass
{
    public const PROTOCOL = 2;
    private const MAX_LINE = 65536;

    private static object $proxy;
    private static Socket $ctl;
    private static string $buffer = '';
    private static bool $fdPassing = true;
    private static ?int $index = null; // worker index; null in the master
    /** @var array<int, Socket> fd number => socket handed out by this process, not released */
    private static array $handedOut = [];
    /** @var array<int, Socket> the master's listeners, as a forked worker inherited them */
    private static array $inherited = [];

    /** Connect, say hello, serve requests until the adapter closes the connection. */
    public static function run(object $proxy, string $name, string $capability = 'fd-passing'): int
    {
        self::$proxy = $proxy;
        self::$fdPassing = $capability === 'fd-passing';
        self::connect(['role' => 'master', 'pid' => getmypid(), 'language' => 'php',
            'name' => $name, 'capabilities' => [$capability]]);
        self::serve();
        return 0;
    }

    public static function workerIndex(): ?int
    {
        return self::$index;
    }

    /**
     * Wait until one of $sockets is readable or $deadline (microtime(true)) passes; the
     * readable ones, [] at the deadline. Watches the control connection meanwhile and
     * exits when the adapter closed it: a blocking wait must never outlive the adapter.
     * @param Socket[] $sockets
     */
    public static function waitReadable(array $sockets, ?float $deadline = null): array
    {
        $watch = true;
        while (true) {
            $read = $watch ? [...$sockets, self::$ctl] : $sockets;
            $write = $except = null;
            $left = $deadline === null ? null : max(0.0, $deadline - microtime(true));
            $ready = @socket_select($read, $write, $except, $left === null ? null : (int)$left,
                $left === null ? 0 : (int)(($left - (int)$left) * 1e6));
            if ($ready === false) {
                $errno = socket_last_error();
                if ($errno === SOCKET_EINTR) {
                    continue;
                }
                throw FdpassError::os($errno, 'select() failed');
            }
            if ($watch && in_array(self::$ctl, $read, true)) {
                $peek = '';
                if (@socket_recv(self::$ctl, $peek, 1, MSG_PEEK | MSG_DONTWAIT) === 0) {
                    exit(0); // the adapter is gone, and so are we
                }
                $watch = false; // data mid-request would break the protocol: don't spin on it
                $read = array_values(array_filter($read, fn ($s) => $s !== self::$ctl));
            }
            if ($read) {
                return $read;
            }
            if ($deadline !== null && microtime(true) >= $deadline) {
                return [];
            }
        }
    }

    /** A copy of $sock that is close-on-exec (PHP has no FD_CLOEXEC); closes $sock. */
    public static function cloexec(Socket $sock): Socket
    {
        $pair = [];
        if (!socket_create_pair(AF_UNIX, SOCK_SEQPACKET, 0, $pair)) {
            $errno = socket_last_error();
            socket_close($sock);
            throw FdpassError::os($errno, 'socketpair() for FD_CLOEXEC failed');
        }
        try {
            if (socket_sendmsg($pair[0], ['iov' => ['L'], 'control' => self::rights($sock)], 0) === false) {
                throw FdpassError::socket($pair[0], 'sendmsg() to self failed');
            }
            $msg = ['buffer_size' => 1, 'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 1)];
            if (socket_recvmsg($pair[1], $msg, MSG_CMSG_CLOEXEC) === false) {
                throw FdpassError::socket($pair[1], 'recvmsg() from self failed');
            }
            $copy = $msg['control'][0]['data'][0] ?? null;
            if (!$copy instanceof Socket) {
                throw FdpassError::os(SOCKET_EMFILE, 'recvmsg() from self brought no fd');
            }
            return $copy;
        } finally {
            socket_close($pair[0]);
            socket_close($pair[1]);
            socket_close($sock);
        }
    }

    /** SCM_RIGHTS control data carrying $sock. PHP 8.2's socket_sendmsg() sends fd 0 for a
     * Socket object in the data; the socket's stream carries the real fd. */
    public static function rights(Socket $sock): array
    {
        return [['level' => SOL_SOCKET, 'type' => SCM_RIGHTS, 'data' => [socket_export_stream($sock)]]];
    }

    /** The fd number of $sock in this process: PHP has no call for it, so the inode of the
     * socket's stream is looked up in /proc/self/fd (Linux). */
    public static function fdOf(Socket $sock): int
    {
        $link = 'socket:[' . fstat(socket_export_stream($sock))['ino'] . ']';
        foreach (scandir('/proc/self/fd') as $name) {
            if (ctype_digit($name) && @readlink("/proc/self/fd/$name") === $link) {
                return (int)$name;
            }
        }
        throw FdpassError::os(SOCKET_EBADF, "no fd of this process is $link");
    }

    /**
     * Run a library call whose exceptions carry no errno. A call of the sockets
     * extension that failed inside it left its errno in socket_last_error(), cleared
     * first so that it is never an earlier call's; \InvalidArgumentException is the
     * contract's ValueError. \Error (a bug) passes through: the kit reports it.
     */
    public static function withErrno(string $op, callable $fn): mixed
    {
        socket_clear_error();
        try {
            return $fn();
        } catch (FdpassError $e) {
            throw $e;
        } catch (\InvalidArgumentException $e) {
            throw new FdpassError('ValueError', "$op: " . $e->getMessage());
        } catch (\Exception $e) {
            $errno = socket_last_error();
            throw $errno ? FdpassError::os($errno, "$op: " . $e->getMessage())
                : new FdpassError('OSError', "$op: " . $e->getMessage());
        }
    }

    /** The errno behind a warning text (some PHP calls report strerror(), not the errno). */
    public static function errnoFromText(string $text, int $default): int
    {
        for ($e = 1; $e < 200; $e++) {
            if (str_ends_with($text, posix_strerror($e))) {
                return $e;
            }
        }
        return $default;
    }

    /** Whether $sock is still open in PHP (a closed Socket object throws on every use). */
    public static function isOpen(Socket $sock): bool
    {
        try {
            @socket_get_option($sock, SOL_SOCKET, SO_TYPE);
            return true;
        } catch (\Error) {
            return false;
        }
    }

    // -- the protocol ---------------------------------------------------------------

    private static function connect(array $hello): void
    {
        $path = getenv('FDPASS_ADAPTER_SOCKET');
        if ($path === false) {
            fwrite(STDERR, "fdpass_adapter.php: FDPASS_ADAPTER_SOCKET is not set (run me through "
                . "the fdpass adapter: pytest --fdpass-impl=exec:...)\n");
            exit(2);
        }
        $ctl = socket_create(AF_UNIX, SOCK_STREAM, 0);
        if ($ctl === false || !@socket_connect($ctl, $path)) {
            fwrite(STDERR, "fdpass_adapter.php: connect($path) failed\n");
            exit(2);
        }
        self::$ctl = $ctl;
        self::send(['hello' => ['protocol' => self::PROTOCOL] + $hello]);
        $reply = json_decode(self::readLine() ?? '', true);
        if (($reply['ok'] ?? false) !== true) {
            fwrite(STDERR, 'fdpass_adapter.php: the adapter refused the hello: '
                . ($reply['message'] ?? 'no reply') . "\n");
            exit(2);
        }
    }

    private static function serve(): void
    {
        while (($line = self::readLine()) !== null) {
            if (self::$index === null) {
                while (pcntl_waitpid(-1, $status, WNOHANG) > 0) {
                    // the master reaps its workers: only their parent can
                }
            }
            self::handle($line);
        }
    }

    private static function handle(string $line): void
    {
        $rq = json_decode($line, true);
        $op = is_array($rq) && is_string($rq['op'] ?? null) ? $rq['op'] : '';
        try {
            $result = match ($op) {
                'is_supported' => self::call('isSupported'),
                'create_socket' => self::handOut(self::call('createSocket', $rq['port'] ?? null,
                    $rq['protocol'] ?? 'tcp'), 'create_socket'),
                'open_channels' => self::call('openChannels', $rq['workers'] ?? null),
                'fork_worker' => ['pid' => self::forkWorker($rq['index'] ?? null)],
                'dispatch' => self::call('dispatch', self::listener($rq, 'dispatch'), $rq['timeout'] ?? null),
                'enter_worker' => self::call('enterWorker', $rq['index'] ?? null),
                'accept' => self::handOut(self::call('accept', self::listener($rq, 'accept')), 'accept'),
                'release' => self::release($rq['fd'] ?? null),
                'close' => self::close(),
                default => throw new FdpassError('unsupported', 'unknown op ' . json_encode($op)),
            };
        } catch (FdpassError $e) {
            self::sendError($e->kind, $e->getMessage(), $e->errno);
            return;
        } catch (\ValueError $e) {
            self::sendError('ValueError', "$op: " . $e->getMessage());
            return;
        } catch (\TypeError $e) {
            // The arguments the kit passed, as the contract's TypeError; anything else is a bug.
            [$text] = explode(', called in ' . __FILE__, $e->getMessage());
            $ours = $text !== $e->getMessage() && !$e instanceof \ArgumentCountError;
            self::sendError($ours ? 'TypeError' : 'internal', $ours ? "$op: $text" : self::where($e));
            return;
        } catch (\Error $e) {
            self::sendError('internal', self::where($e)); // the adapter names the op
            return;
        } catch (\Throwable $e) {
            self::sendError('OSError', "$op: " . get_class($e) . ': ' . $e->getMessage());
            return;
        }
        if ($result instanceof Socket) {
            self::send(['ok' => true, 'result' => ['fd' => array_search($result, self::$handedOut, true)]], $result);
            return;
        }
        self::send(['ok' => true, 'result' => $result]);
    }

    private static function call(string $method, mixed ...$args): mixed
    {
        if (!method_exists(self::$proxy, $method)) {
            throw new FdpassError('unsupported', get_class(self::$proxy) . " has no $method()");
        }
        return self::$proxy->$method(...$args);
    }

    private static function where(\Throwable $e): string
    {
        return get_class($e) . ': ' . $e->getMessage() . ' (' . basename($e->getFile()) . ':' . $e->getLine() . ')';
    }

    private static function handOut(mixed $sock, string $op): Socket
    {
        if (!$sock instanceof Socket) {
            throw new FdpassError('internal', "$op returned " . get_debug_type($sock) . ', not a Socket');
        }
        self::$handedOut[self::fdOf($sock)] = $sock;
        return $sock;
    }

    /** The Socket a request's "listener" names. null (a socket this program never returned) or
     * an fd it no longer holds is EBADF, except for an fd-passing worker's accept(), which
     * takes its connections from its channel, not from a listener. */
    private static function listener(array $rq, string $op): ?Socket
    {
        $fd = $rq['listener'] ?? null;
        $sock = is_int($fd) ? (self::$handedOut[$fd] ?? self::$inherited[$fd] ?? null) : null;
        if ($sock === null && ($op === 'dispatch' || !self::$fdPassing)) {
            throw FdpassError::os(SOCKET_EBADF, "$op: fd " . json_encode($fd) . ' is no listener this process holds');
        }
        return $sock;
    }

    private static function release(mixed $fd): mixed
    {
        $sock = is_int($fd) ? (self::$handedOut[$fd] ?? null) : null;
        if ($sock === null) {
            throw FdpassError::os(SOCKET_EBADF, 'release: fd ' . json_encode($fd) . ' was not handed out by this process');
        }
        unset(self::$handedOut[$fd]);
        if (method_exists(self::$proxy, 'release')) {
            self::$proxy->release($sock);
        } elseif (self::isOpen($sock)) {
            socket_close($sock);
        }
        return null;
    }

    private static function close(): mixed
    {
        self::call('close');
        if (self::$index !== null) {
            // A worker's connections are the adapter's to close, like any caller's.
            foreach (self::$handedOut as $sock) {
                if (self::isOpen($sock)) {
                    socket_close($sock);
                }
            }
        }
        self::$handedOut = self::$inherited = []; // listeners are the proxy's: its close() closed them
        return null;
    }

    private static function forkWorker(mixed $index): int
    {
        if (!is_int($index) || self::$index !== null) {
            throw new FdpassError('ValueError', 'fork_worker: an int index, in the master only');
        }
        $pid = pcntl_fork();
        if ($pid < 0) {
            throw FdpassError::os(pcntl_get_last_error(), 'fork_worker: fork() failed');
        }
        if ($pid > 0) {
            return $pid;
        }
        // The new worker: the master's connection is the master's alone. Its listeners
        // stay reachable for a shared-listener accept(); the proxy drops what it must
        // in enterWorker().
        socket_close(self::$ctl);
        self::$buffer = '';
        self::$index = $index;
        self::$inherited = self::$handedOut;
        self::$handedOut = [];
        self::connect(['role' => 'worker', 'index' => $index, 'pid' => getmypid()]);
        self::serve();
        exit(0);
    }

    private static function readLine(): ?string
    {
        while (($nl = strpos(self::$buffer, "\n")) === false) {
            $chunk = '';
            $n = @socket_recv(self::$ctl, $chunk, self::MAX_LINE, 0);
            if ($n === false && socket_last_error(self::$ctl) === SOCKET_EINTR) {
                continue;
            }
            if (!$n) {
                return null; // EOF: the adapter is done with us
            }
            self::$buffer .= $chunk;
        }
        $line = substr(self::$buffer, 0, $nl);
        self::$buffer = substr(self::$buffer, $nl + 1);
        return $line;
    }

    private static function sendError(string $kind, string $message, ?int $errno = null): void
    {
        $reply = ['ok' => false, 'error' => $kind, 'message' => $message];
        if ($errno !== null) {
            $reply['errno'] = $errno; // omitted, never null, when there is none
        }
        self::send($reply);
    }

    /** One reply line; a socket travels with it as SCM_RIGHTS. Plain replies use send(),
     * so that syscall faults injected into sendmsg hit the data path only. */
    private static function send(array $msg, ?Socket $sock = null): void
    {
        $line = json_encode($msg, JSON_INVALID_UTF8_SUBSTITUTE) . "\n";
        if ($sock !== null) {
            if (@socket_sendmsg(self::$ctl, ['iov' => [$line], 'control' => self::rights($sock)], MSG_NOSIGNAL) === false) {
                exit(0); // the adapter is gone
            }
            return;
        }
        while ($line !== '') {
            $n = @socket_send(self::$ctl, $line, strlen($line), MSG_NOSIGNAL);
            if ($n === false && socket_last_error(self::$ctl) === SOCKET_EINTR) {
                continue;
            }
            if (!$n) {
                exit(0);
            }
            $line = substr($line, $n);
        }
    }
}
