#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into seeds/<target>/.

Queue files follow the layout cleanup(8) writes (see
POSTFIX-QMGR-INTERNALS.md section 4.3); each input starts with the
target's control byte. Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def rec(t, data=b""):
    n, out = len(data), bytearray([ord(t)])
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(out) + data


def queue_file(rcpts, extracted=(), milter=(), done=(), mixed=0):
    f = bytearray(rec("C", b"0" * 95))
    f += rec("T", b"1795393402 847387") + rec("A", b"create_time=1795393402")
    f += rec("A", b"rewrite_context=local") + rec("F", b"root") + rec("S", b"root@example.org")
    f += rec("A", b"log_client_address=192.0.2.1") + rec("A", b"trace_flags=1024")
    f += rec("V", b"+=") + rec("W", b"%15d" % 1795397002)
    for i, r in enumerate(rcpts):
        f += rec("A", b"notify_flags=14") + rec("A", b"dsn_orig_rcpt=rfc822;" + r)
        f += rec("O", r) + rec("D" if i in done else "R", r)
    ptr_at = len(f)
    f += rec("p", b"%15d" % 0)
    m_at = len(f)
    f += rec("M")
    data_offset = len(f)
    f += rec("N", b"Subject: seed") + rec("N", b"") + rec("N", b"body")
    data_size = len(f) - data_offset
    f += rec("X") + rec("L", b"smtp:[filter]:10025") + rec("A", b"encoding=8bit")
    for r in extracted:
        f += rec("O", r) + rec("R", r)
    f += rec("E")
    if milter:
        block = len(f)
        for r in milter:
            f += rec("R", r)
        f += rec("p", b"%15d" % m_at)
        f[ptr_at:ptr_at + 17] = rec("p", b"%15d" % block)
        mixed = 1
    total = len(rcpts) + len(extracted) + len(milter)
    c = b"%15d %15d %15d %15d %15d %15d" % (data_size, data_offset, total, mixed | 28, 0, 0)
    f[0:97] = rec("C", c)
    return bytes(f)


def attrs(*pairs):
    out = b""
    for n, v in pairs:
        out += n + b"\0" + v + b"\0"
    return out + b"\0"


SEEDS = {
    "qfile_read": {
        "plain": b"\x03" + queue_file([b"a@example.net", b"b@example.net", b"c@example.org"]),
        "done": b"\x01" + queue_file([b"a@x", b"b@x", b"c@x"], done=(1,), extracted=[b"bcc@x"]),
        "milter": b"\x02" + queue_file([b"a@x"], milter=[b"m1@x", b"m2@x"], extracted=[b"e@x"]),
        "one": b"\x00" + queue_file([b"postmaster"]),
    },
    "attr_parse": {
        "deliver": b"\x07" + attrs((b"status", b"4.4.1"), (b"diag_type", b""), (b"diag_text", b""),
                                   (b"mta_type", b""), (b"mta_mname", b""), (b"action", b""),
                                   (b"reason", b"refused"), (b"status", b"4294967295")),
        "resolve": b"\x03" + attrs((b"flags", b"0"), (b"transport", b"smtp"), (b"nexthop", b"[h]:25"),
                                   (b"recipient", b"u@x"), (b"flags", b"4096")),
        "announce": b"\x01" + attrs((b"protocol", b"delivery_request_protocol")) + b"status\0",
    },
    "main_cf": {
        "main.cf": b"""# seed
compatibility_level = 3.6
myhostname = host.example
mydomain = example
myorigin = $mydomain
mydestination = $myhostname, localhost.$mydomain, localhost
smtputf8_enable = ${{$compatibility_level} <level {1} ? {no} : {yes}}
syslog_name = ${multi_instance_name?{$multi_instance_name}:{postfix}}
queue_run_delay = 300s
maximal_queue_lifetime = 5d
hash_queue_depth = 2
hash_queue_names = deferred, defer
slow_destination_rate_delay = 1s
smtp_destination_concurrency_limit = 10
default_destination_concurrency_negative_feedback = 1/8
qmgr_message_active_limit = 100
  continued line
""",
    },
    "spool_path": {"short": b"\x01D0D39992097", "long": b"\x024Xy2Bc0001zLbJ", "flush": b"\x01a_b"},
    "peer_text": {
        "quoted": b'"john doe"@example.com',
        "dsn": b"4.3.2 deferred transport",
        "times": (1795393402).to_bytes(8, "little") + (847387).to_bytes(8, "little")
        + (1795393403).to_bytes(8, "little") + (12).to_bytes(8, "little") + b"\x02\x02",
    },
    "status_input": {
        "status": b"status\n",
        "explain": b"explain 6FAE3991F95\n",
        "deferlog": b"recipient=x@closed.example\noffset=250\nstatus=4.4.1\naction=delayed\n"
        b"reason=connect to 127.0.0.1[127.0.0.1]:28695: Connection refused\n\n<b@y>: old style\n\n",
        "answer": b'{"explain":{"queue_id":"A","place":"deferred","due":1800000300,"notes":[],'
        b'"recipients":[{"address":"x@y","state":"deferred","text":"in deferred","transport":null,'
        b'"destination":null,"ahead":null,"busy":null,"window":null,"until":null,'
        b'"status":"4.4.1","reason":"r","job":null}]}}',
    },
}

for target, seeds in SEEDS.items():
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
