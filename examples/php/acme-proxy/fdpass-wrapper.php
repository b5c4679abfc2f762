<?php
/*
 * The third-party Acme\Proxy\ForkingProxy (ForkingProxy.php, unmodified) behind the
 * fdpass adapter, on the PHP kit. The wrapper only maps names and fills what the
 * library does not do and the contract requires: close-on-exec sockets, an errno
 * for its exceptions, a close() that releases what it created, and an accept()
 * that does not block past the adapter's end.
 *
 *   pytest --fdpass-impl="exec:php examples/php/acme-proxy/fdpass-wrapper.php"
 */
declare(strict_types=1);

require __DIR__ . '/../fdpass_adapter.php';
require __DIR__ . '/ForkingProxy.php';

use Acme\Proxy\ForkingProxy;

final class ForkingProxyForFdpass
{
    private ForkingProxy $lib;
    /** @var array<int, Socket> the listeners and connections handed out, not yet released */
    private array $owned = [];

    public function __construct()
    {
        $this->lib = new ForkingProxy();
    }

    public function isSupported(): bool
    {
        return $this->lib->isSupported();
    }

    // int $port: a port that is no int is the kit's TypeError, as the contract wants.
    public function createSocket(int $port, mixed $protocol): Socket
    {
        if (Fdpass::workerIndex() !== null) {
            throw FdpassError::os(SOCKET_EINVAL, 'create_socket: not in a worker');
        }
        $listener = Fdpass::withErrno('create_socket', fn () => $this->lib->createSocket($port, $protocol));
        return $this->own(Fdpass::cloexec($listener)); // PHP cannot set FD_CLOEXEC itself
    }

    // Workers inherit the listener: the kit hands it over as the adapter names it.
    public function accept(?Socket $listener): Socket
    {
        Fdpass::waitReadable([$listener]); // the library's accept() blocks: wait here instead
        $connection = Fdpass::withErrno('accept', fn () => $this->lib->accept($listener));
        return $this->own(Fdpass::cloexec($connection->getSocket()));
    }

    public function release(Socket $socket): void
    {
        unset($this->owned[spl_object_id($socket)]);
        socket_close($socket);
    }

    // In the master: the listeners; in a worker: its copies of them and its connections.
    public function close(): void
    {
        foreach ($this->owned as $socket) {
            socket_close($socket);
        }
        $this->owned = [];
    }

    private function own(Socket $socket): Socket
    {
        $this->owned[spl_object_id($socket)] = $socket;
        return $socket;
    }
}

exit(Fdpass::run(new ForkingProxyForFdpass(), 'acme-forking-proxy', 'shared-listener'));
