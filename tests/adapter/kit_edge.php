<?php
/*
 * A proxy on the PHP kit that goes wrong on purpose, for tests/adapter/test_kits.py
 * (the C twin is kit_edge.c). create_socket(1) fails without an errno,
 * create_socket(2) hits a bug (an undefined method), any other port gives a
 * listener; accept() blocks until a client comes; open_channels & co. are missing.
 * EDGE_CAP picks the capability; EDGE_MODE=die-between-calls makes is_supported()
 * schedule SIGALRM, whose default action kills the program one second later;
 * EDGE_MODE=close-bug makes close() in a worker hit a bug.
 */
declare(strict_types=1);

require __DIR__ . '/../../examples/php/fdpass_adapter.php';

final class EdgeProxy
{
    /** @var Socket[] */
    private array $listeners = [];

    public function isSupported(): bool
    {
        if (getenv('EDGE_MODE') === 'die-between-calls') {
            pcntl_alarm(1);
        }
        return true;
    }

    public function createSocket(int $port, mixed $protocol): Socket
    {
        if ($port === 1) {
            throw new RuntimeException('create_socket: a failure the library gives no errno for');
        }
        if ($port === 2) {
            $this->noSuchMethod();
        }
        $sock = socket_create(AF_INET, SOCK_STREAM, SOL_TCP);
        socket_set_option($sock, SOL_SOCKET, SO_REUSEADDR, 1);
        if (!socket_bind($sock, '127.0.0.1', $port) || !socket_listen($sock, 16)) {
            throw FdpassError::socket($sock, 'create_socket: bind() or listen() failed');
        }
        return $this->listeners[] = Fdpass::cloexec($sock);
    }

    public function accept(?Socket $listener): Socket
    {
        Fdpass::waitReadable([$listener]);
        $conn = socket_accept($listener);
        if ($conn === false) {
            throw FdpassError::socket($listener, 'accept: accept() failed');
        }
        return Fdpass::cloexec($conn);
    }

    public function close(): void
    {
        if (getenv('EDGE_MODE') === 'close-bug' && Fdpass::workerIndex() !== null) {
            close_all_the_things(); // the bug: no such function
        }
        foreach ($this->listeners as $sock) {
            if (Fdpass::isOpen($sock)) {
                socket_close($sock);
            }
        }
        $this->listeners = [];
    }
}

exit(Fdpass::run(new EdgeProxy(), 'php-kit-edge', getenv('EDGE_CAP') ?: 'shared-listener'));
