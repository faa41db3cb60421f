"""The measuring instruments: queue-manager CPU and memory from /proc, the
whole machine's CPU from /proc/stat, the maillog read as it grows, and a
paced SMTP injector for fresh mail."""

import os
import re
import smtplib
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds spent by all CPUs outside idle and iowait, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def io_stall_seconds():
    """Seconds during which some task waited for block I/O, from the
    kernel's pressure stall information (/proc/pressure/io, "some"
    total, microseconds); None where the kernel has no PSI."""
    try:
        with open("/proc/pressure/io") as f:
            m = re.search(r"^some .*total=(\d+)", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) / 1e6 if m else None


def status_field(status, name):
    """The number of field `name` in the text of a /proc/PID/status file
    (kB for VmRSS and VmHWM, a count for the context switches); None if
    it is not there."""
    m = re.search(rf"^{name}:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class QmgrSampler:
    """Follows every queue-manager process of one instance (master may
    restart it): its CPU time and VmHWM (peak resident set, from
    /proc/PID/status), and over its life its context switches (voluntary
    and involuntary, summed over the live threads' /proc/PID/task/TID/status)
    and minor page faults (minflt of /proc/PID/stat).

    CPU time is utime+stime of /proc/PID/stat (the whole process, exited
    threads included) in 10 ms clock ticks. The same quantity at ns
    resolution is the sum of sum_exec_runtime (first field of
    /proc/PID/task/TID/schedstat) over the live threads: the kernel scales
    the tick-sampled utime and stime so that they add up to it. The larger
    of the two is taken: the schedstat sum, unless a thread has exited.
    The sum over all pids seen of their last sample is cpu_seconds(), so a
    window's CPU is cpu_seconds() at its end minus at its start. A process
    that exits loses what it used since its last sample."""

    def __init__(self, inst, rescan=1.0):
        self.inst = inst
        self.ns = {}  # pid -> CPU time in ns, last sample
        self.ticks = {}  # pid -> (utime, stime) in clock ticks, last sample
        self.hwm_kb = {}  # pid -> VmHWM
        self.switches = {}  # pid -> (voluntary, involuntary), last sample
        self.minflt = {}  # pid -> minor faults, last sample
        self.live = set()
        self.rescan = rescan
        self.last_rescan = 0.0

    def sample(self):
        now = time.time()
        if now - self.last_rescan >= self.rescan or not self.live:
            self.live = set(self.inst.qmgr_pids())
            self.last_rescan = now
        for pid in list(self.live):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                self.live.discard(pid)
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            # fields[0] is field 3 (state); utime and stime are fields 14, 15.
            self.ticks[pid] = (int(fields[11]), int(fields[12]))
            self.minflt[pid] = int(fields[7])  # field 10
            ns = 0
            vol = invol = 0
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        ns += int(f.read().split()[0])
                    with open(f"/proc/{pid}/task/{tid}/status") as f:
                        t = f.read()
                    vol += status_field(t, "voluntary_ctxt_switches")
                    invol += status_field(t, "nonvoluntary_ctxt_switches")
                self.switches[pid] = (vol, invol)
            except (OSError, ValueError, IndexError, TypeError):
                pass
            self.ns[pid] = max(ns, (self.ticks[pid][0] + self.ticks[pid][1]) * 1e9 / CLK_TCK)
            hwm = status_field(status, "VmHWM")
            if hwm is not None:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)

    def cpu_seconds(self):
        return sum(self.ns.values()) / 1e9

    def user_system_seconds(self):
        return (sum(u for u, _ in self.ticks.values()) / CLK_TCK,
                sum(s for _, s in self.ticks.values()) / CLK_TCK)

    def context_switches(self):
        """(voluntary, involuntary) over the life of every pid seen."""
        return (sum(v for v, _ in self.switches.values()),
                sum(i for _, i in self.switches.values()))

    def minor_faults(self):
        return sum(self.minflt.values())

    def peak_rss_mb(self):
        return max(self.hwm_kb.values(), default=0) / 1024

    def pids(self):
        return sorted(self.ticks)


LINE_RE = re.compile(r"^\S+\s+\d+\s+\d\d:\d\d:\d\d \S+ ([^\s\[]+)\[(\d+)\]: (.*)$")
ID_RE = re.compile(r"^([0-9A-F]{6,}): (.*)$")
DELIVERY_RE = re.compile(r"^to=<([^>]*)>, .*?delay=([0-9.]+), .*?status=(\w+)")


class Msg:
    """What the log says about one queue id."""

    __slots__ = ("msgid", "active", "removed", "sent", "deferred", "bounced", "other", "delays")

    def __init__(self):
        self.msgid = None  # from cleanup's `message-id=<...>` line
        self.active = 0  # `from=..., nrcpt=N (queue active)` lines
        self.removed = 0
        self.sent = {}  # recipient -> status=sent lines
        self.deferred = 0
        self.bounced = 0
        self.other = 0  # other status= values (expired, undeliverable...)
        self.delays = []  # delay= of the status=sent lines


def shape(text):
    """A log text with the variable parts replaced, to compare which kinds of
    lines two queue managers write."""
    text = re.sub(r"<[^>]*>", "<>", text)
    text = re.sub(r"\[[0-9.]+\]", "[ADDR]", text)
    text = re.sub(r"[0-9A-F]{6,}", "ID", text)
    text = re.sub(r"[0-9]+(\.[0-9]+)?", "N", text)
    return text


class LogTail:
    """The maillog, read incrementally: per message, the lines that account
    for it; the queue manager's own warnings and errors; the shapes of the
    queue manager's lines; master's complaints about the queue manager.

    Short queue ids are recycled (the microseconds of the creation time and
    the inode number: a freed inode comes back at once, and mail sent at a
    fixed rate arrives at the same microseconds again), so a queue id names
    one message from cleanup's `message-id=` line, or from the first line
    about a staged file, until the next message with that queue id:
    `msgs` holds the latest message of each queue id, `earlier` those that
    came before, `by_msgid` the messages that cleanup saw, by Message-ID."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.msgs = {}
        self.earlier = []
        self.by_msgid = {}
        self.removed_total = 0
        self.active_total = 0  # `(queue active)` lines
        self.sent_total = 0
        self.deferred_total = 0
        self.newly_deferred = []  # ids whose first status=deferred line came in
        self.first_sent_at = None  # time.time() of the poll that saw it
        self.qmgr_trouble = []  # qmgr lines with warning/fatal/panic/error
        self.qmgr_shapes = {}
        self.master_trouble = []  # master lines about the qmgr process
        self.warnings = []  # warnings from other programs

    def all_msgs(self):
        return list(self.msgs.values()) + self.earlier

    def skip_to_end(self):
        try:
            self.offset = os.path.getsize(self.path)
        except FileNotFoundError:
            self.offset = 0

    def msg(self, qid):
        m = self.msgs.get(qid)
        if m is None:
            m = self.msgs[qid] = Msg()
        return m

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        now = time.time()
        for raw in lines:
            self._line(raw.decode(errors="replace"), now)

    def _line(self, raw, now):
        m = LINE_RE.match(raw)
        if not m:
            return
        program, text = m.group(1), m.group(3)
        daemon = program.rsplit("/", 1)[-1]
        if daemon == "qmgr":
            self.qmgr_shapes[shape(text)] = self.qmgr_shapes.get(shape(text), 0) + 1
        idm = ID_RE.match(text)
        if not idm:
            if daemon == "qmgr" and re.match(r"(warning|fatal|panic|error):", text):
                self.qmgr_trouble.append(raw)
            elif daemon == "master" and "libexec/qmgr" in text:
                self.master_trouble.append(raw)
            elif text.startswith(("warning:", "fatal:", "panic:")) \
                    and "symlink leaves directory" not in text \
                    and "unable to look up public/qmgr" not in text:
                self.warnings.append(raw)
            return
        qid, body = idm.group(1), idm.group(2)
        if daemon == "cleanup" and body.startswith("message-id=<"):
            old = self.msgs.get(qid)
            if old is not None:  # a recycled queue id
                self.earlier.append(old)
            msg = self.msgs[qid] = Msg()
            msg.msgid = body[len("message-id=<"):].rstrip(">")
            self.by_msgid[msg.msgid] = msg
        elif body.startswith("to=<"):
            d = DELIVERY_RE.match(body)
            if not d:
                return
            msg = self.msg(qid)
            status = d.group(3)
            if status == "sent":
                msg.sent[d.group(1)] = msg.sent.get(d.group(1), 0) + 1
                msg.delays.append(float(d.group(2)))
                self.sent_total += 1
                if self.first_sent_at is None:
                    self.first_sent_at = now
            elif status == "deferred":
                if msg.deferred == 0:
                    self.newly_deferred.append(qid)
                msg.deferred += 1
                self.deferred_total += 1
            elif status == "bounced":
                msg.bounced += 1
            else:
                msg.other += 1
        elif body == "removed":
            self.msg(qid).removed += 1
            self.removed_total += 1
        elif body.endswith("(queue active)"):
            self.msg(qid).active += 1
            self.active_total += 1


def percentile(values, p):
    """Nearest-rank percentile (p in 0-100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


QUEUED_AS = re.compile(r"queued as ([0-9A-F]{6,})")


class Injector:
    """Fresh mail over SMTP into the instance's smtpd at a fixed rate: `threads`
    persistent sessions, message k due at start + k/rate, until `count`
    messages were sent or stop() is called. Records the queue id smtpd
    returned for each message and its Message-ID (queue ids recycle)."""

    def __init__(self, port, rate, rcpt, count=None, threads=None, tag="fresh"):
        self.port = port
        self.rate = rate
        self.rcpt = rcpt
        self.count = count
        self.threads = threads or max(2, min(16, int(rate // 25) + 1))
        self.tag = tag
        self.ids = []  # queue ids smtpd returned, in the order of the replies
        self.msgids = []  # the Message-IDs of those messages
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers = []
        self.start_time = None
        self.end_time = None
        self.max_lateness = 0.0

    def start(self):
        self.start_time = time.time() + 0.05
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self.workers.append(t)

    def stop(self):
        self.stopping.set()

    def join(self, timeout=None):
        for t in self.workers:
            t.join(timeout)
        self.end_time = time.time()

    def summary(self):
        took = (self.end_time or time.time()) - self.start_time
        return (f"sent {len(self.ids)} fresh messages in {took:.0f} s ({len(self.ids) / took:.0f}"
                f" msg/s, asked {self.rate}), latest send {self.max_lateness * 1000:.0f} ms late")

    def _connect(self):
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="inject." + self.tag, timeout=60)
        s.ehlo()
        return s

    def _run(self, k):
        s = None
        i = k
        while not self.stopping.is_set() and (self.count is None or i < self.count):
            due = self.start_time + i / self.rate
            wait = due - time.time()
            if wait > 0:
                if self.stopping.wait(wait):
                    break
            else:
                self.max_lateness = max(self.max_lateness, -wait)
            msgid = f"{self.tag}-{os.getpid()}-{i}@rqmgr-bench.example"
            text = (f"From: <bench@rqmgr-bench.example>\r\nTo: <{self.rcpt}>\r\n"
                    f"Subject: {self.tag} {i}\r\nMessage-ID: <{msgid}>\r\n\r\n"
                    f"Fresh mail number {i} for rqmgr's bench.\r\n")
            try:
                if s is None:
                    s = self._connect()
                s.mail("bench@rqmgr-bench.example")
                code, resp = s.rcpt(self.rcpt)
                if code != 250:
                    raise smtplib.SMTPException(f"RCPT: {code} {resp!r}")
                code, resp = s.data(text.encode())
                m = QUEUED_AS.search(resp.decode(errors="replace"))
                if code != 250 or not m:
                    raise smtplib.SMTPException(f"DATA: {code} {resp!r}")
                with self.lock:
                    self.ids.append(m.group(1))
                    self.msgids.append(msgid)
            except (OSError, smtplib.SMTPException) as e:
                with self.lock:
                    self.errors.append(f"message {i}: {e}")
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass
                s = None
            i += self.threads
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass
