"""What every Kafka client script of tests/kafka_clients.rs shares: failing clearly, bounding every
wait, and printing one `checked: ...` line per thing checked.

Contract with the Rust test (tests/kafka_clients.rs):
- stdout carries `client: ...` (which library and version ran), `checked: ...` lines and, for the
  failover script, its handshake lines; every line is flushed at once.
- A failed check prints `FAILED: <what>` on stderr and exits 1; an unexpected exception prints its
  traceback, then `FAILED: ...`, and exits 1.
- The whole script is bounded by --timeout-s: a watchdog thread prints `FAILED: ... did not finish`
  with every thread's stack and exits 3, even if the main thread is stuck inside a client library
  (librdkafka's calls release the GIL; faulthandler's C-level timer is the backstop if one does not).

Plain python3 (3.7 or newer), no third-party imports here, so it runs with Debian's /usr/bin/python3
and with the venv of .ci/kafka-clients-venv alike.
"""

import argparse
import faulthandler
import os
import sys
import threading
import time
import traceback

# Between two looks at a polled condition.
POLL_INTERVAL_S = 0.1
# How long past the watchdog faulthandler's own C-level timer fires, if the watchdog thread never ran.
BACKSTOP_EXTRA_S = 15


class Failure(Exception):
    """A check that did not hold; the message says what was expected and what was seen."""


def say(line):
    print(line, flush=True)


def checked(what):
    say("checked: " + what)


def check(condition, what):
    if not condition:
        raise Failure(what)


def wait_until(what, probe, timeout_s, interval_s=POLL_INTERVAL_S):
    """Calls `probe()` until it returns (True, value), at most `timeout_s`; returns value. `probe`
    returns (False, last_seen) otherwise, and `last_seen` goes into the failure message."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, seen = probe()
        if done:
            return seen
        if time.monotonic() >= deadline:
            raise Failure("timed out after %.0f s waiting for %s; last seen: %s" % (timeout_s, what, seen))
        time.sleep(interval_s)


def now_ms():
    return int(time.time() * 1000)


def confluent_client_line(confluent_kafka):
    """`client: confluent-kafka X librdkafka Y`. version() and libversion() return (string, int) in
    1.x; in 2.16.1 version() returns the string alone."""
    def text(version):
        return version[0] if isinstance(version, tuple) else str(version)

    return "client: confluent-kafka %s librdkafka %s" % (text(confluent_kafka.version()),
                                                       text(confluent_kafka.libversion()))


def parser(description):
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...] of Kafka listeners")
    arguments.add_argument("--timeout-s", type=float, default=120.0, help="bound on the whole run")
    return arguments


def _watchdog(timeout_s, name):
    def fire():
        sys.stderr.write("FAILED: %s did not finish within %.0f s (its --timeout-s); stacks:\n" % (name, timeout_s))
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(timeout_s + BACKSTOP_EXTRA_S, exit=True)


def main(run, arguments):
    """Parses the arguments, arms the watchdog and runs `run(args)`; exits 0 only if it returns."""
    args = arguments.parse_args()
    name = os.path.basename(sys.argv[0])
    _watchdog(args.timeout_s, name)
    try:
        run(args)
    except Failure as failure:
        sys.stdout.flush()
        sys.stderr.write("FAILED: %s: %s\n" % (name, failure))
        sys.stderr.flush()
        os._exit(1)
    except BaseException as error:  # noqa: BLE001 - anything else is a failure too, with its traceback
        sys.stdout.flush()
        traceback.print_exc()
        sys.stderr.write("FAILED: %s: unexpected %s: %s\n" % (name, type(error).__name__, error))
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not a return: a client library's background threads must not keep the process alive
    # (or hang it in their atexit handlers) once every check passed.
    os._exit(0)
