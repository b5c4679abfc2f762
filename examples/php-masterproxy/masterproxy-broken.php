<?php
/*
 * The broken twin of masterproxy.php: the queue gets the permissions that the seed's
 * msg_get_queue() call gave it by default, 0666, so any local user may inject or steal
 * idle tokens. The conformance suites must fail exactly IPC-05.
 */
declare(strict_types=1);

const QUEUE_MODE = 0666;
require __DIR__ . '/masterproxy.php';
