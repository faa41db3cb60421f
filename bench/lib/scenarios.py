"""The scenarios. Each one starts a fresh private Postfix instance (one per
queue manager and round), stages or sends its mail, measures, checks that
every message is accounted for, and stops the instance.

A scenario function gets (ctx, run, params) and fills run.figures; a failed
check sets run.fail (the table then prints FAIL instead of its figures).
See bench/README.md for what each scenario measures and how.
"""

import contextlib
import os
import signal
import subprocess
import threading
import time
import traceback

import stage
from measure import (Injector, LogTail, QmgrSampler, io_stall_seconds, loadavg,
                     machine_busy_seconds, percentile, status_field)
from postfix import POSTKICK, POSTQUEUE, BenchError, Instance

POLL = 0.1  # seconds between samples of the log and of /proc
STALL = 60  # seconds without progress before a wait gives up


class Run:
    """One scenario with one queue manager: figures, check, notes."""

    def __init__(self, scenario, qmgr, round_no):
        self.scenario = scenario
        self.qmgr = qmgr
        self.round = round_no
        self.figures = {}
        self.fail = None
        self.notes = []
        self.load = None  # load average before the measurement
        self.staging = None  # (count, seconds)
        self.shapes = {}
        self.elapsed = None

    def check(self, cond, what):
        if not cond and self.fail is None:
            self.fail = what
        return cond


class Ctx:
    """What every scenario needs: queue manager paths and options."""

    def __init__(self, qmgr_paths, keep=False, verbose=True):
        self.qmgr_paths = qmgr_paths
        self.keep = keep
        self.verbose = verbose

    def say(self, text):
        if self.verbose:
            print(f"  {time.strftime('%H:%M:%S')} {text}", flush=True)


@contextlib.contextmanager
def instance(ctx, run, **kw):
    inst = Instance(f"{run.scenario}-{run.qmgr}", ctx.qmgr_paths[run.qmgr], keep=ctx.keep, **kw)
    try:
        inst.start()
        yield inst
    except BenchError as e:
        run.check(False, f"error: {e}")
    except Exception as e:  # a bug of the bench: report it, go on with the next run
        traceback.print_exc()
        run.check(False, f"bench error: {e!r}")
    finally:
        t = time.time()
        killed = inst.stop()
        if time.time() - t > 5:
            run.notes.append(f"postfix stop took {time.time() - t:.0f} s")
        if killed:
            run.notes.append(f"processes left after postfix stop, killed: {killed}")
        if run.fail or ctx.keep:
            inst.keep = True
            run.notes.append(f"instance kept in {inst.root}")
        t = time.time()
        inst.remove()
        ctx.say(f"stopped and removed the instance ({time.time() - t:.0f} s to remove)")


def message_text(subject):
    return (f"From: <bench@rqmgr-bench.example>\nSubject: {subject}\n\n"
            "A message for rqmgr's bench.\n")


QUIET_BUSY = 0.25  # machine busy fraction (of all CPUs) that counts as quiet
QUIET_IO = 0.05  # fraction of a second with some task stalled on I/O that counts as quiet
QUIET_MAX = 60  # seconds to wait for quiet at most


def wait_quiet(ctx, run):
    """Writes back every dirty page (sync), then waits until the whole
    machine was at most QUIET_BUSY busy and stalled on I/O at most QUIET_IO
    of the time, over two consecutive seconds (the previous instance's
    files being written back, discarded or removed, a compiler...),
    QUIET_MAX seconds at most; says so in the notes when it waited or gave
    up. Without the sync, the staged files of one queue manager's run
    would be written back during its measurement, whenever the kernel's
    writeback timer fired."""
    cpus = os.cpu_count() or 1
    start = time.time()
    os.sync()
    quiet = 0
    busy = stall = 0.0
    while quiet < 2 and time.time() - start < QUIET_MAX:
        b0, s0, t0 = machine_busy_seconds(), io_stall_seconds(), time.time()
        time.sleep(1)
        s1, dt = io_stall_seconds(), time.time() - t0
        busy = (machine_busy_seconds() - b0) / (dt * cpus)
        stall = (s1 - s0) / dt if s0 is not None and s1 is not None else 0.0
        quiet = quiet + 1 if busy <= QUIET_BUSY and stall <= QUIET_IO else 0
    waited = time.time() - start
    if quiet < 2:
        run.notes.append(f"machine still {busy:.0%} busy, {stall:.0%} stalled on I/O "
                         f"after {waited:.0f} s of waiting")
    elif waited > 3:
        run.notes.append(f"waited {waited:.0f} s for the machine to quiet down")


def begin(ctx, inst, run):
    """Waits for a quiet machine, then starts the log tail and samplers of
    a measurement."""
    wait_quiet(ctx, run)
    log = LogTail(inst.log_path)
    log.skip_to_end()
    run.load = loadavg()
    return log, QmgrSampler(inst)


def wait(ctx, run, log, sampler, done, progress, timeout, poll=POLL, what="the queue to drain"):
    """Samples until done() holds; gives up after `timeout` s or STALL s
    without a change of progress(), or when the qmgr fails. Returns the time
    at which done() was first seen, or None."""
    start = time.time()
    last_progress, last_change = None, start
    while True:
        log.poll()
        sampler.sample()
        now = time.time()
        if done():
            return now
        p = progress()
        if p != last_progress:
            last_progress, last_change = p, now
        if log.qmgr_trouble and any(" fatal: " in l or " panic: " in l for l in log.qmgr_trouble):
            run.check(False, "the queue manager failed: " + log.qmgr_trouble[-1])
            return None
        if log.master_trouble:
            run.check(False, "master: " + log.master_trouble[-1])
            return None
        if now - start > timeout or now - last_change > STALL:
            run.check(False, f"gave up waiting for {what} after {now - start:.0f} s"
                             f" (progress: {p})")
            return None
        time.sleep(poll)


def finish(run, log, sampler):
    """Final samples; log lines still on their way to postlogd."""
    sampler.sample()
    time.sleep(0.5)
    log.poll()
    run.shapes = dict(log.qmgr_shapes)
    if log.qmgr_trouble:
        run.notes.append(f"{len(log.qmgr_trouble)} qmgr warning/error lines, first: "
                         + log.qmgr_trouble[0].split("]: ", 1)[-1])
    if log.warnings:
        run.notes.append(f"{len(log.warnings)} warnings from other programs, first: "
                         + log.warnings[0].split(": ", 1)[-1])
    u, s = sampler.user_system_seconds()
    run.notes.append(f"qmgr user/system CPU over its life {u:.2f}/{s:.2f} s")
    vol, invol = sampler.context_switches()
    run.notes.append(f"qmgr context switches {vol} voluntary, {invol} involuntary;"
                     f" {sampler.minor_faults()} minor faults")
    if len(sampler.pids()) > 1:
        pids = sampler.pids()
        run.notes.append(f"{len(pids)} queue manager processes (restarted), pids "
                         + " ".join(map(str, pids[:5])) + (" ..." if len(pids) > 5 else ""))


class StatusPoller:
    """rqmgr only: `rqmgr status --json` every `period` seconds in a thread
    while a measurement runs; counts the answers and the failures."""

    def __init__(self, inst, period=0.1):
        self.argv = [inst.qmgr_path, "status", "-c", inst.etc, "--json"]
        self.spool = inst.spool
        self.period = period
        self.ok, self.failed, self.first_error = 0, 0, None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        # From the moment rqmgr has made its socket (it starts with the drain).
        sock = os.path.join(self.spool, "private", "#rqmgr-status")
        while not self.stop_flag.is_set() and not os.path.exists(sock):
            self.stop_flag.wait(0.01)
        while not self.stop_flag.is_set():
            r = subprocess.run(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode == 0:
                self.ok += 1
            else:
                self.failed += 1
                self.first_error = self.first_error or r.stderr.decode(errors="replace").strip()
            self.stop_flag.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()


# ---- checks ------------------------------------------------------------------

def check_delivered(run, msgs, rcpts, what="staged"):
    """Every message (a measure.Msg, None if the log never named it): one
    `removed` line, one status=sent line for each of its `rcpts` distinct
    recipients, nothing deferred or bounced."""
    lost = dup = wrong = 0
    for m in msgs:
        if m is None or m.removed == 0 or len(m.sent) < rcpts:
            lost += 1
        elif m.removed > 1 or len(m.sent) > rcpts or any(c > 1 for c in m.sent.values()):
            dup += 1
        if m is not None and (m.deferred or m.bounced or m.other):
            wrong += 1
    run.check(lost == 0, f"{lost} of {len(msgs)} {what} messages not delivered and removed")
    run.check(dup == 0, f"{dup} {what} messages delivered or removed twice")
    run.check(wrong == 0, f"{wrong} {what} messages with deferred/bounced lines")


def check_no_other_mail(run, log, known):
    """No message other than the known ones (measure.Msg records) went
    through the queue (a bounce or a delay notice would)."""
    known = {id(m) for m in known if m is not None}
    extra = [m for m in log.all_msgs() if id(m) not in known and (m.active or m.removed)]
    run.check(not extra, f"{len(extra)} unexpected messages in the log (bounces?)")


def check_queues(run, inst, expect=None):
    """Nothing in any message queue, except `expect` = {queue: set of ids}."""
    expect = expect or {}
    for q, count in inst.queue_counts().items():
        want = expect.get(q, set())
        if count != len(want):
            run.check(False, f"{count} files left in {q} (expected {len(want)})")
        elif want and set(inst.queue_files(q)) != want:
            run.check(False, f"the files in {q} are not the staged ones")


def check_sink(run, inst, n):
    got = inst.sink.messages()
    run.check(got == n, f"smtp-sink received {got} messages, expected {n}")


def fig_per_message(run, n, unit, seconds, qmgr_cpu, machine_cpu, sampler):
    run.figures[f"{unit}/s"] = n / seconds
    run.figures["time s"] = seconds
    run.figures[f"qmgr CPU us/{unit}"] = qmgr_cpu / n * 1e6
    run.figures[f"machine CPU us/{unit}"] = machine_cpu / n * 1e6
    run.figures["qmgr peak RSS MB"] = sampler.peak_rss_mb()


def latency_figures(run, msgs, prefix="latency"):
    delays = [m.delays[0] for m in msgs if m is not None and m.delays]
    if delays:
        run.figures[f"{prefix} p50 ms"] = percentile(delays, 50) * 1000
        run.figures[f"{prefix} p99 ms"] = percentile(delays, 99) * 1000


# ---- 1. drains, 5. start-up, 6. many destinations ------------------------------

def drain(ctx, run, p):
    """N messages piled up (incoming, or active for start-up) while no queue
    manager runs; then the queue manager starts; time until all are removed."""
    kind = p["kind"]
    n, rcpts, unit = p["n"], 1, "msg"
    sink = kind in ("smtp", "manydest")
    queue = "active" if kind == "startup" else "incoming"
    with instance(ctx, run, sink=sink) as inst:
        if kind in ("discard", "startup"):
            data = stage.make_template(inst, ["r@discard.example"], message_text(kind))
        elif kind == "5rcpt":
            rcpts = 5
            data = stage.make_template(inst, [f"r{i}@discard.example" for i in range(1, 6)],
                                       message_text(kind))
        elif kind == "bigmsg":
            rcpts, n, unit = p["n"], 1, "rcpt"
            domains = max(1, rcpts // 10)
            data = stage.make_template(
                inst, [f"u{j:05d}@d{j % domains:04d}.discard.example" for j in range(rcpts)],
                message_text(kind))
        elif kind == "smtp":
            data = stage.make_template(inst, ["r@sink.example"], message_text(kind))
        elif kind == "manydest":
            dests = p["dests"]
            marker = b"u00000@d00000"
            tmpl = stage.make_template(inst, ["u00000@d00000.many.example"], message_text(kind))
            if tmpl.count(marker) < 2:  # the R and O records, at least
                raise BenchError("manydest template lacks the recipient marker")
            variants = [tmpl.replace(marker, b"u%05d@d%05d" % (k, k)) for k in range(dests)]

            def data(i):
                return variants[i % dests]
        else:
            raise ValueError(kind)
        t = time.time()
        ids = stage.stage(inst, queue, 1 if kind == "bigmsg" else n, data)
        run.staging = (len(ids), time.time() - t)
        stage.verify(inst, ids, queue)
        ctx.say(f"staged {len(ids)} in {queue} in {run.staging[1]:.1f} s")

        log, sampler = begin(ctx, inst, run)
        total = n * rcpts
        poll = p.get("status_poll") and run.qmgr in ("rqmgr", "before")
        if p.get("status_poll") and not poll:
            run.notes.append("no status queries: only rqmgr answers them")
        c_machine = machine_busy_seconds()
        t0 = inst.enable_qmgr()
        with (StatusPoller(inst) if poll else contextlib.nullcontext()) as poller:
            t1 = wait(ctx, run, log, sampler, lambda: log.removed_total >= len(ids),
                      lambda: (log.removed_total, log.sent_total), timeout=120 + total / 50,
                      poll=0.02)
        c_machine = machine_busy_seconds() - c_machine
        if poller is not None:
            run.figures["status queries"] = poller.ok
            run.check(poller.failed == 0, f"{poller.failed} status queries failed, first: "
                                          f"{poller.first_error}")
        finish(run, log, sampler)
        if t1 is None:
            return
        if kind == "startup":
            run.figures["first delivery s"] = log.first_sent_at - t0
        fig_per_message(run, total if unit == "rcpt" else n, unit, t1 - t0,
                        sampler.cpu_seconds(), c_machine, sampler)
        staged = [log.msgs.get(q) for q in ids]
        check_delivered(run, staged, rcpts)
        check_no_other_mail(run, log, staged)
        check_queues(run, inst)
        if sink:
            check_sink(run, inst, n)


# ---- 2. steady flow ---------------------------------------------------------------

def steady(ctx, run, p):
    """Fresh mail over SMTP at a fixed rate to smtp-sink while the queue
    manager runs; latency from arrival (smtpd's MAIL FROM) to delivery."""
    rate, n = p["rate"], p["n"]
    with instance(ctx, run, sink=True) as inst:
        inst.enable_qmgr()
        time.sleep(2)
        log, sampler = begin(ctx, inst, run)
        sampler.sample()
        c_qmgr, c_machine = sampler.cpu_seconds(), machine_busy_seconds()
        inj = Injector(inst.smtpd_port, rate, "r@sink.example", count=n)
        t0 = time.time()
        inj.start()
        t1 = wait(ctx, run, log, sampler,
                  lambda: len(inj.ids) + len(inj.errors) >= n and log.removed_total >= len(inj.ids),
                  lambda: (len(inj.ids), log.removed_total), timeout=n / rate + 120)
        inj.stop()
        inj.join(30)
        c_qmgr, c_machine = sampler.cpu_seconds() - c_qmgr, machine_busy_seconds() - c_machine
        finish(run, log, sampler)
        run.check(not inj.errors, f"{len(inj.errors)} SMTP errors, first: "
                  + (inj.errors[0] if inj.errors else ""))
        if t1 is None:
            return
        ids = list(inj.ids)
        fresh = [log.by_msgid.get(m) for m in inj.msgids]
        latency_figures(run, fresh)
        run.figures["qmgr CPU us/msg"] = c_qmgr / n * 1e6
        run.figures["machine CPU us/msg"] = c_machine / n * 1e6
        run.figures["qmgr peak RSS MB"] = sampler.peak_rss_mb()
        run.notes.append(inj.summary())
        check_delivered(run, fresh, 1, "fresh")
        check_no_other_mail(run, log, fresh)
        check_queues(run, inst)
        check_sink(run, inst, len(ids))


# ---- 3. big deferred queue, 4. postqueue -f ------------------------------------------

def stage_deferred(ctx, inst, run, n):
    data = stage.make_template(inst, ["r@closed.example"], message_text("deferred"))
    t = time.time()
    ids = stage.stage(inst, "deferred", n, data, mtime=time.time() + 86400)
    run.staging = (n, time.time() - t)
    stage.verify(inst, ids, "deferred")
    ctx.say(f"staged {n} in deferred in {run.staging[1]:.1f} s")
    return ids


def deferred(ctx, run, p):
    """N not-due messages in deferred, queue_run_delay = D; qmgr CPU over K
    scan periods without other mail; then fresh mail at a fixed rate."""
    n, delay, periods, rate, fresh = p["n"], p["delay"], p["periods"], p["rate"], p["fresh"]
    main = [("queue_run_delay", f"{delay}s")]
    with instance(ctx, run, sink=True, main_cf=main) as inst:
        ids = stage_deferred(ctx, inst, run, n)
        log, sampler = begin(ctx, inst, run)
        inst.enable_qmgr()
        # Let the start-up scan finish, then measure whole scan periods.
        settle = time.time() + delay + 2
        while time.time() < settle:
            sampler.sample()
            time.sleep(0.2)
        sampler.sample()
        run.notes.append(f"qmgr CPU in its first {delay + 2} s: {sampler.cpu_seconds():.2f} s")
        c_qmgr, c_machine = sampler.cpu_seconds(), machine_busy_seconds()
        end = time.time() + periods * delay
        while time.time() < end:
            sampler.sample()
            time.sleep(min(0.2, max(0, end - time.time())))
        sampler.sample()
        c_qmgr, c_machine = sampler.cpu_seconds() - c_qmgr, machine_busy_seconds() - c_machine
        run.figures["qmgr CPU ms/scan"] = c_qmgr / periods * 1000
        run.figures["machine CPU ms/scan"] = c_machine / periods * 1000
        ctx.say(f"{periods} scan periods: qmgr {c_qmgr:.2f} s CPU")

        count = rate * fresh
        inj = Injector(inst.smtpd_port, rate, "r@sink.example", count=count)
        inj.start()
        t1 = wait(ctx, run, log, sampler,
                  lambda: len(inj.ids) + len(inj.errors) >= count and log.removed_total >= len(inj.ids),
                  lambda: (len(inj.ids), log.removed_total), timeout=fresh + 120)
        inj.stop()
        inj.join(30)
        ctx.say(inj.summary())
        run.notes.append(inj.summary())
        finish(run, log, sampler)
        run.check(not inj.errors, f"{len(inj.errors)} SMTP errors, first: "
                  + (inj.errors[0] if inj.errors else ""))
        if t1 is None:
            return
        fresh = [log.by_msgid.get(m) for m in inj.msgids]
        latency_figures(run, fresh, "fresh")
        run.figures["qmgr peak RSS MB"] = sampler.peak_rss_mb()
        check_delivered(run, fresh, 1, "fresh")
        touched = [q for q in ids if q in log.msgs]
        run.check(not touched, f"{len(touched)} not-due deferred messages were touched")
        check_no_other_mail(run, log, fresh)
        check_queues(run, inst, {"deferred": set(ids)})
        check_sink(run, inst, len(fresh))


def flush(ctx, run, p):
    """N not-due messages in deferred to a closed port; fresh mail at a fixed
    rate; postqueue -f; time until every message was tried once and is back
    in deferred."""
    n, rate = p["n"], p["rate"]
    main = [("minimal_backoff_time", "3600s"), ("maximal_backoff_time", "7200s")]
    with instance(ctx, run, sink=True, main_cf=main) as inst:
        ids = stage_deferred(ctx, inst, run, n)
        staged = set(ids)
        log, sampler = begin(ctx, inst, run)
        inst.enable_qmgr()
        time.sleep(3)
        inj = Injector(inst.smtpd_port, rate, "r@sink.example")
        inj.start()
        time.sleep(2)
        sampler.sample()
        c_qmgr, c_machine = sampler.cpu_seconds(), machine_busy_seconds()
        fresh_before = len(inj.ids)
        t0 = time.time()
        inst.run([POSTQUEUE, "-c", inst.etc, "-f"])
        tried = set()

        def all_tried():
            tried.update(q for q in log.newly_deferred if q in staged)
            log.newly_deferred.clear()
            return len(tried) >= n and not os.listdir(f"{inst.spool}/active")

        def progress():
            return log.deferred_total

        t1 = wait(ctx, run, log, sampler, all_tried, progress, timeout=120 + n / 50,
                  poll=0.5, what="every deferred message to be tried")
        sampler.sample()
        c_qmgr, c_machine = sampler.cpu_seconds() - c_qmgr, machine_busy_seconds() - c_machine
        during = list(inj.msgids[fresh_before:])
        ctx.say(f"every deferred message tried after {time.time() - t0:.0f} s")
        inj.stop()
        inj.join(30)
        run.notes.append(inj.summary())
        msgids = list(inj.msgids)

        def fresh_done():
            return all(m in log.by_msgid and log.by_msgid[m].removed for m in msgids)
        t2 = wait(ctx, run, log, sampler, fresh_done, lambda: log.removed_total,
                  timeout=120, what="fresh mail")
        finish(run, log, sampler)
        run.check(not inj.errors, f"{len(inj.errors)} SMTP errors, first: "
                  + (inj.errors[0] if inj.errors else ""))
        if t1 is None or t2 is None:
            return
        fig_per_message(run, n, "msg", t1 - t0, c_qmgr, c_machine, sampler)
        latency_figures(run, [log.by_msgid.get(m) for m in during], "fresh")
        attempts = [log.msgs[q].deferred for q in ids if q in log.msgs]
        never = n - len(attempts)
        run.check(never == 0, f"{never} deferred messages never tried")
        if attempts and max(attempts) > 1:
            run.notes.append(f"{sum(1 for a in attempts if a > 1)} messages tried more than once"
                             f" (at most {max(attempts)} times)")
        bad = [q for q in ids if q in log.msgs and (log.msgs[q].sent or log.msgs[q].removed
                                                     or log.msgs[q].bounced)]
        run.check(not bad, f"{len(bad)} deferred messages sent, bounced or removed")
        run.notes.append(f"{len(during)} fresh messages during the flush")
        fresh = [log.by_msgid.get(m) for m in msgids]
        check_delivered(run, fresh, 1, "fresh")
        check_no_other_mail(run, log, fresh + [log.msgs.get(q) for q in ids])
        check_queues(run, inst, {"deferred": staged})
        check_sink(run, inst, len(fresh))


# ---- 7. memory per in-core message ------------------------------------------

def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return status_field(f.read(), "VmRSS") or 0


def memory(ctx, run, p):
    """N messages of R recipients held in the active queue: their
    destination takes connections and never answers. The queue manager's
    resident set while idle, and once every message is in memory."""
    n, rcpts = p["n"], p["rcpts"]
    # oqmgr holds at most qmgr_message_recipient_limit recipients in core
    # (4 000 messages of 5 at the default): raised so that every queue
    # manager holds all N messages.
    main = [("qmgr_message_active_limit", str(max(20000, n))),
            ("qmgr_message_recipient_limit", str(max(20000, n * rcpts)))]
    with instance(ctx, run, main_cf=main) as inst:
        data = stage.make_template(inst, [f"r{i}@silent.example" for i in range(1, rcpts + 1)],
                                   message_text("memory"))
        t = time.time()
        ids = stage.stage(inst, "hold", n, data)
        run.staging = (len(ids), time.time() - t)
        ctx.say(f"staged {len(ids)} in hold in {run.staging[1]:.1f} s")
        log, sampler = begin(ctx, inst, run)
        inst.enable_qmgr()
        deadline = time.time() + 30
        while not inst.qmgr_pids() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # start-up done, nothing to do
        pids = inst.qmgr_pids()
        if not run.check(len(pids) == 1, f"queue manager processes: {pids}"):
            return
        pid = pids[0]
        idle = vm_rss_kb(pid)
        for q in ids:
            os.rename(f"{inst.spool}/hold/{q}", f"{inst.spool}/incoming/{q}")
        # postkick writes its request and then a null byte; a queue manager
        # that has read the request and closed the connection (Postfix's
        # qmgr too, about half the time here) kills it with SIGPIPE.
        kick = inst.run([POSTKICK, "-c", inst.etc, "public", "qmgr", "I"], check=False)
        if kick.returncode not in (0, -signal.SIGPIPE):
            raise BenchError(f"postkick failed ({kick.returncode}): {kick.stdout}{kick.stderr}")
        t1 = wait(ctx, run, log, sampler, lambda: log.active_total >= n,
                  lambda: log.active_total, timeout=120 + n / 100, poll=0.5,
                  what="every message to be in the active queue")
        time.sleep(1)
        full = vm_rss_kb(pid)
        finish(run, log, sampler)
        if t1 is None:
            return
        run.check(inst.qmgr_pids() == [pid], "the queue manager was restarted")
        run.figures["idle RSS MB"] = idle / 1024
        run.figures[f"RSS MB, {n} in core"] = full / 1024
        run.figures["bytes per message"] = (full - idle) * 1024 / n
        staged = [log.msgs.get(q) for q in ids]
        read = sum(1 for m in staged if m is not None and m.active == 1)
        run.check(read == n, f"{n - read} messages not read exactly once")
        done = sum(1 for m in staged if m is not None and (m.sent or m.deferred or m.bounced
                                                            or m.removed or m.other))
        run.check(done == 0, f"{done} messages left the active queue")
        check_no_other_mail(run, log, staged)
