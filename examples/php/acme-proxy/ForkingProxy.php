<?php
/*
 * A third-party PHP proxy library, written the way PHP projects write them and
 * knowing nothing of fdpass: workers forked by the application inherit the listener
 * and call accept() on it. Its exceptions carry no errno. fdpass-wrapper.php runs it
 * through the conformance toolkit without changing a line of it.
 */
namespace Acme\Proxy;

class ProxyException extends \RuntimeException
{
}

final class Protocol
{
    public const TCP = 'tcp';
    public const HTTP = 'http';
    public const WEBSOCKET = 'websocket';
}

final class Connection
{
    public function __construct(private \Socket $socket)
    {
    }

    public function getSocket(): \Socket
    {
        return $this->socket;
    }

    public function getPeerName(): string
    {
        socket_getpeername($this->socket, $address, $port);
        return "$address:$port";
    }

    public function close(): void
    {
        socket_close($this->socket);
    }
}

class ForkingProxy
{
    public function isSupported(): bool
    {
        return extension_loaded('sockets') && extension_loaded('pcntl');
    }

    public function createSocket(int $port, $protocol = Protocol::TCP): \Socket
    {
        if (!in_array($protocol, [Protocol::TCP, Protocol::HTTP, Protocol::WEBSOCKET], true)) {
            throw new \InvalidArgumentException('Unsupported protocol: ' . var_export($protocol, true));
        }
        if ($port < 0 || $port > 65535) {
            throw new \InvalidArgumentException("Invalid port: $port");
        }
        $socket = @socket_create(AF_INET, SOCK_STREAM, SOL_TCP);
        if ($socket === false) {
            throw new ProxyException('Could not create socket');
        }
        if (!@socket_set_option($socket, SOL_SOCKET, SO_REUSEADDR, 1)) {
            socket_close($socket);
            throw new ProxyException('Could not set SO_REUSEADDR (setsockopt)');
        }
        if (!@socket_bind($socket, '127.0.0.1', $port)) {
            socket_close($socket);
            throw new ProxyException("Could not bind to port $port");
        }
        if (!@socket_listen($socket, 128)) {
            socket_close($socket);
            throw new ProxyException("Could not listen on port $port");
        }
        return $socket;
    }

    public function accept($socket): Connection
    {
        $client = @socket_accept($socket);
        if ($client === false) {
            throw new ProxyException('Could not accept a connection');
        }
        return new Connection($client);
    }
}
