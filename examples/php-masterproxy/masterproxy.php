<?php
/*
 * masterproxy.php: MasterProxy.php behind the fdpass adapter, on the PHP kit.
 *
 *   pytest --fdpass-impl="exec:php examples/php-masterproxy/masterproxy.php"
 *
 * masterproxy-broken.php is the broken twin: the seed's 0666 queue (fails IPC-05).
 */
declare(strict_types=1);

require __DIR__ . '/../php/fdpass_adapter.php';
require __DIR__ . '/MasterProxy.php';

exit(Fdpass::run(new MasterProxy(), 'php-masterproxy', 'fd-passing'));
