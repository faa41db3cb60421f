"""Staging many queue files fast.

A real message goes through sendmail -> pickup -> cleanup into incoming while
no queue manager runs; its queue file is the template. Each copy is a new file
written the way cleanup writes one: created under a temporary name, owner and
group of the template (postfix), mode 0700 (complete: qmgr only opens files
with the owner execute bit), then renamed to its queue id. A short queue id
is the microseconds of the creation time (five hex digits) followed by the
inode number in hex (global/mail_queue.c, file_id.c), and postsuper -s renames
any file whose name does not match its inode, so the name is built from the
new file's own inode; the microseconds are random. The queue id is stored only
in the file name (the template's id appears in its Received: header, which no
program parses). In hashed queues (deferred) the file goes to the
subdirectory named after the first character of the id (hash_queue_depth = 1).

`verify()` runs postsuper -s (which would log `warning: ... renaming` for a
misnamed or misplaced file) and postcat on one copy.
"""

import os
import random
import time

from postfix import BenchError

HASHED = ("deferred",)


def make_template(inst, rcpts, text, timeout=60):
    """Submits one message with the queue manager off and returns the bytes
    of its queue file once cleanup has finished it (mode 0700); the original
    file is then removed."""
    before = set(inst.queue_files("incoming"))
    inst.sendmail(rcpts, text)
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = set(inst.queue_files("incoming")) - before
        for qid in new:
            path = f"{inst.spool}/incoming/{qid}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_mode & 0o100:
                with open(path, "rb") as f:
                    data = f.read()
                os.unlink(path)
                return data
        time.sleep(0.05)
    raise BenchError(f"the template message did not reach incoming in {timeout} s")


def stage(inst, queue, n, data, mtime=None, seed=0):
    """Writes n queue files into `queue` and returns their queue ids.
    `data` is the file content, or a function i -> content. `mtime` (a Unix
    time) sets their modification time, e.g. into the future for deferred
    mail that is not due."""
    rng = random.Random(seed)
    qdir = f"{inst.spool}/{queue}"
    tmp = f"{inst.root}/stage/tmp"
    uid, gid = inst.postfix_uid, inst.postfix_gid
    made_dirs = set()
    ids = []
    content = data if callable(data) else (lambda _i: data)
    for i in range(n):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content(i))
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        qid = "%05X%X" % (rng.randrange(1000000), ino)
        if queue in HASHED:
            sub = f"{qdir}/{qid[0]}"
            if sub not in made_dirs:
                if not os.path.isdir(sub):
                    os.mkdir(sub, 0o700)
                    os.chown(sub, uid, gid)
                made_dirs.add(sub)
            dest = f"{sub}/{qid}"
        else:
            dest = f"{qdir}/{qid}"
        os.rename(tmp, dest)
        ids.append(qid)
    return ids


def verify(inst, ids, queue):
    """postsuper -s finds nothing to rename, and postcat reads one copy."""
    before = inst.log_text().count("postsuper[")
    inst.run(["/usr/sbin/postsuper", "-c", inst.etc, "-s"])
    time.sleep(0.3)  # postlogd writes asynchronously
    lines = [l for l in inst.log_text().splitlines() if "postsuper[" in l]
    if len(lines) > before and any("warning" in l for l in lines[before:]):
        raise BenchError("postsuper -s changed staged files: " + " | ".join(lines[before:][:5]))
    found = inst.queue_files(queue)
    if len(found) != len(ids) or set(found) != set(ids):
        raise BenchError(f"staged {len(ids)} files in {queue}, found {len(found)}")
    out = inst.run(["/usr/sbin/postcat", "-c", inst.etc, "-q", ids[0]])
    if "recipient: " not in out.stdout:
        raise BenchError("postcat -q on a staged file shows no recipient: " + out.stdout[:500])
