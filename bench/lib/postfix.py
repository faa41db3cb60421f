"""A private, throwaway Postfix instance under /tmp for one benchmark run.

The layout is the one tests/support/mod.rs and .ci/demo build (see
../shared/reference/PRIVATE-INSTANCE.md): ROOT/{etc,libexec,log,spool,data,
mail,sink}, every daemon a symlink into /usr/lib/postfix/sbin except
ROOT/libexec/qmgr, which points to the queue manager under test. The instance
starts with the qmgr line of master.cf commented out, so that mail can be
staged; `enable_qmgr()` uncomments it and sends SIGHUP to the master (the
last step of `postfix reload`, without the background postsuper run that
`postfix reload` also starts: that would walk the whole queue while the queue
manager is being measured).

Routes (transport_maps = texthash:ROOT/etc/transport), all on 127.0.0.1:
  discard.example, *.discard.example   -> discard:
  sink.example                         -> smtp:[127.0.0.1]:<smtp-sink port>
  *.many.example                       -> many:[127.0.0.1]:<smtp-sink port>
      (`many` is a clone of smtp with many_destination_recipient_limit = 1,
      so that qmgr keeps one queue per recipient: see bench/README.md)
  closed.example                       -> smtp:[127.0.0.1]:<a closed port>
  silent.example                       -> smtp:[127.0.0.1]:<a port that takes
      connections and never answers: the smtp agents wait for the greeting
      (smtp_helo_timeout), so the mail stays in the active queue>
Nothing leaves the machine: default_transport and relay_transport are error:.
"""

import os
import pwd
import re
import grp
import shutil
import signal
import socket
import subprocess
import time

DAEMON_DIR = "/usr/lib/postfix/sbin"
POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
POSTCAT = "/usr/sbin/postcat"
POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
POSTKICK = "/usr/sbin/postkick"
SMTP_SINK = "/usr/sbin/smtp-sink"

HOSTNAME = "rqmgr-bench.example"
SENDER = "bench@" + HOSTNAME
# Queues that hold messages; a finished run leaves nothing in them (except
# the staged deferred mail of the deferred and flush scenarios).
MESSAGE_QUEUES = ["maildrop", "incoming", "active", "deferred", "hold", "corrupt"]


class BenchError(Exception):
    """Something went wrong with the instance itself (not a figure)."""


_ports_handed_out = set()


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on, from 20000-31999 (below
    Linux's ephemeral range, so that outgoing connections do not take it)."""
    base = (os.getpid() * 7919) % 12000
    for step in range(12000):
        port = 20000 + (base + step * 13) % 12000
        if port in _ports_handed_out:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _ports_handed_out.add(port)
        return port
    raise BenchError("no free TCP port on 127.0.0.1 in 20000-31999")


def write_dated(path, text):
    """Writes a file and dates it back 10 s: Postfix programs wait for a
    main.cf younger than about 2 s (util/load_file.c)."""
    with open(path, "w") as f:
        f.write(text)
    t = time.time() - 10
    os.utime(path, (t, t))


def mkdir(path, uid, gid, mode):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown: chown clears the set-gid bit


def instance_pids(config_dir):
    """Pids of every process whose environment holds MAIL_CONFIG=config_dir:
    the master and all daemons and commands of one instance."""
    want = ("MAIL_CONFIG=" + config_dir).encode()
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(v == want or v == want + b"/" for v in env.split(b"\0")):
            found.append(int(name))
    return found


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


class SmtpSink:
    """smtp-sink on 127.0.0.1:port, without message dumps; `-c` makes it
    print running counters, among them the number of messages received."""

    def __init__(self, directory, port):
        self.port = port
        os.makedirs(directory, exist_ok=True)
        self.out_path = os.path.join(directory, "smtp-sink.out")
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", "-h", "sink." + HOSTNAME,
             f"127.0.0.1:{port}", "1024"],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise BenchError(f"smtp-sink does not listen on port {port}: "
                                     + open(self.out_path, "rb").read().decode(errors="replace"))
                time.sleep(0.02)

    def messages(self):
        """Messages received so far, from the last `-c` counter (`sess=N
        quit=N mesg=N`, refreshed with a carriage return), or 0."""
        with open(self.out_path, "rb") as f:
            text = f.read().decode(errors="replace")
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # by pid: the process we started
            self.proc.wait()
        self.proc = None
        self.out.close()


class Instance:
    """One private Postfix instance; see the module comment."""

    def __init__(self, name, qmgr_path, main_cf=(), sink=False, keep=False):
        self.root = f"/tmp/rqmgr-bench-{name}-{os.getpid()}"
        self.etc = self.root + "/etc"
        self.spool = self.root + "/spool"
        self.log_path = self.root + "/log/maillog"
        self.qmgr_path = qmgr_path
        self.main_cf_extra = list(main_cf)
        self.want_sink = sink
        self.keep = keep
        self.sink = None
        self.smtpd_port = free_port()
        self.sink_port = free_port()
        self.closed_port = free_port()
        self.silent = None  # a socket that listens and never answers
        self.silent_port = free_port()
        self.qmgr_enabled = False
        self.master_pid = None
        self.postfix_uid = pwd.getpwnam("postfix").pw_uid
        self.postfix_gid = grp.getgrnam("postfix").gr_gid

    # ---- layout and configuration ----------------------------------------

    def _layout(self):
        if os.path.exists(self.root):
            shutil.rmtree(self.root)
        postfix = self.postfix_uid
        nobody = pwd.getpwnam("nobody").pw_uid
        postdrop = grp.getgrnam("postdrop").gr_gid
        mkdir(self.root, 0, 0, 0o755)
        for d in ("etc", "libexec", "log", "spool", "sink", "stage"):
            mkdir(f"{self.root}/{d}", 0, 0, 0o755)
        mkdir(self.root + "/data", postfix, 0, 0o700)
        mkdir(self.root + "/mail", nobody, 0, 0o755)
        for q in ("active", "bounce", "corrupt", "defer", "deferred", "flush",
                  "hold", "incoming", "private", "saved", "trace"):
            mkdir(f"{self.spool}/{q}", postfix, 0, 0o700)
        mkdir(self.spool + "/maildrop", postfix, postdrop, 0o1730)
        mkdir(self.spool + "/public", postfix, postdrop, 0o2710)
        mkdir(self.spool + "/pid", 0, 0, 0o755)
        for name in sorted(os.listdir(DAEMON_DIR)):
            if name != "qmgr":
                os.symlink(f"{DAEMON_DIR}/{name}", f"{self.root}/libexec/{name}")
        if not os.access(self.qmgr_path, os.X_OK):
            raise BenchError(f"queue manager {self.qmgr_path} is not executable")
        os.symlink(self.qmgr_path, self.root + "/libexec/qmgr")

    def _write_config(self):
        r = self.root
        main = f"""# Private Postfix instance for rqmgr's bench/: loopback only.
compatibility_level = 3.6
queue_directory = {r}/spool
data_directory = {r}/data
daemon_directory = {r}/libexec
command_directory = /usr/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
default_privs = nobody
myhostname = {HOSTNAME}
mydomain = example
myorigin = $myhostname
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
default_transport = error:5.7.1 no mail leaves this bench instance
relay_transport = error:5.7.1 no mail leaves this bench instance
transport_maps = texthash:{r}/etc/transport
alias_maps = texthash:{r}/etc/aliases
alias_database =
local_recipient_maps = $alias_maps
mail_spool_directory = {r}/mail
biff = no
maillog_file = {r}/log/maillog
maillog_file_prefixes = {r}/log
# delay= and delays= with 2 significant digits down to microseconds
# (the default stops at 10 ms), for the latency percentiles.
delay_logging_resolution_limit = 6
many_destination_recipient_limit = 1
"""
        for k, v in self.main_cf_extra:
            main += f"{k} = {v}\n"
        write_dated(self.etc + "/main.cf", main)
        write_dated(self.etc + "/transport", f"""discard.example discard:
.discard.example discard:
sink.example smtp:[127.0.0.1]:{self.sink_port}
.many.example many:[127.0.0.1]:{self.sink_port}
closed.example smtp:[127.0.0.1]:{self.closed_port}
silent.example smtp:[127.0.0.1]:{self.silent_port}
""")
        write_dated(self.etc + "/aliases",
                    "".join(f"{u} {r}/mail/{u}\n" for u in
                            ("bench", "postmaster", "root", "mailer-daemon")))
        self._write_master_cf()

    def _write_master_cf(self):
        hash_ = "" if self.qmgr_enabled else "#"
        write_dated(self.etc + "/master.cf", f"""# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{self.smtpd_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
{hash_}qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
many      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")

    # ---- start, stop -----------------------------------------------------

    def start(self):
        """Lays out ROOT, starts smtp-sink (if asked for) and the instance,
        with the qmgr line of master.cf commented out."""
        self._layout()
        self._write_config()
        if self.want_sink:
            self.sink = SmtpSink(self.root + "/sink", self.sink_port)
        self.silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.silent.bind(("127.0.0.1", self.silent_port))
        self.silent.listen(4096)
        out = self.run([POSTFIX, "-c", self.etc, "start"])
        if out.returncode != 0:
            raise BenchError("postfix start failed: " + out.stdout + out.stderr)
        pidfile = self.spool + "/pid/master.pid"
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(pidfile) and "daemon started" in self.log_text():
                break
            time.sleep(0.05)
        else:
            raise BenchError("the master did not log `daemon started` in 30 s")
        with open(pidfile) as f:
            self.master_pid = int(f.read().split()[0])

    def enable_qmgr(self):
        """Uncomments the qmgr line and makes the master re-read master.cf
        (SIGHUP, as the end of `postfix reload`). Returns the time of the
        signal: the master starts the queue manager right away."""
        self.qmgr_enabled = True
        self._write_master_cf()
        t = time.time()
        os.kill(self.master_pid, signal.SIGHUP)
        return t

    def stop(self):
        """`postfix stop`, then waits until every process of the instance has
        exited; SIGKILL (by pid) for those left after 15 s. Returns the pids
        that had to be killed."""
        if self.master_pid is not None and pid_alive(self.master_pid):
            self.run([POSTFIX, "-c", self.etc, "stop"], check=False)
        deadline = time.time() + 15
        while instance_pids(self.etc) and time.time() < deadline:
            time.sleep(0.05)
        killed = instance_pids(self.etc)
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.sink:
            self.sink.stop()
        if self.silent:
            self.silent.close()
            self.silent = None
        return killed

    def remove(self):
        if not self.keep:
            subprocess.run(["rm", "-rf", "--one-file-system", self.root], check=False)

    # ---- commands and files ----------------------------------------------

    def run(self, argv, check=True, stdin=None, timeout=120):
        """Runs a command; output goes to files, not pipes (`postfix reload`
        and friends leave background processes holding inherited pipes)."""
        with open(self.root + "/log/cmd.out", "w+") as out, \
                open(self.root + "/log/cmd.err", "w+") as err:
            p = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                               stdout=out, stderr=err, timeout=timeout)
            out.seek(0)
            err.seek(0)
            p.stdout, p.stderr = out.read(), err.read()
        if check and p.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_files(self, queue):
        """Names (queue ids) of the files in one queue, hashed subdirectories
        included."""
        names = []
        for dirpath, _dirs, files in os.walk(f"{self.spool}/{queue}"):
            names.extend(files)
        return names

    def queue_counts(self):
        return {q: len(self.queue_files(q)) for q in MESSAGE_QUEUES}

    def sendmail(self, rcpts, text, sender=SENDER):
        """Submits one message with sendmail(1)."""
        path = self.root + "/stage/submit.msg"
        with open(path, "w") as f:
            f.write(text)
        with open(path) as f:
            self.run([SENDMAIL, "-C", self.etc, "-f", sender, "--"] + list(rcpts), stdin=f)

    def qmgr_pids(self):
        """Pids of the running queue manager processes: children of our
        master whose command name is `qmgr` (master runs ROOT/libexec/qmgr)."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.find("(") + 1:stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2:].split()
            if comm == "qmgr" and int(fields[1]) == self.master_pid:
                pids.append(int(name))
        return pids
