#!/usr/bin/env python3
"""Captures fuzz seeds from real traffic: dig and kdig query a dnsmasq serving the test world's
zone (nettrust/tests/world) through a recording relay, inside a private network namespace.

Run as root from fuzz/: `unshare -n python3 capture-seeds.py`. Writes seeds/{query,answer,framing}/.
"""
import os, socket, subprocess, threading, hashlib, time, sys

ZONE = """no-resolv
no-hosts
bind-interfaces
port=5300
user=root
pid-file=
local-ttl=60
listen-address=127.0.0.1
host-record=a.test,192.0.2.10,2001:db8:1::10
host-record=b.test,192.0.2.11,2001:db8:1::11
host-record=c.test,192.0.2.12
cname=alias.test,c.test
address=/zero.test/0.0.0.0
address=/zero.test/::
host-record=n1.test,203.0.113.1
"""

def save(kind, data):
    d = os.path.join("seeds", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)

def udp_relay(sock):
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.settimeout(2)
    while True:
        q, peer = sock.recvfrom(65535)
        save("query", q)
        up.sendto(q, ("127.0.0.1", 5300))
        try:
            a, _ = up.recvfrom(65535)
        except socket.timeout:
            continue
        save("answer", a)
        sock.sendto(a, peer)

def tcp_relay(listener):
    while True:
        conn, _ = listener.accept()
        up = socket.create_connection(("127.0.0.1", 5300))
        stream = b""
        conn.settimeout(1)
        while True:
            try:
                chunk = conn.recv(65535)
            except socket.timeout:
                break
            if not chunk:
                break
            stream += chunk
            up.sendall(chunk)
            up.settimeout(2)
            try:
                reply = up.recv(65535)
            except socket.timeout:
                reply = b""
            if reply:
                save("answer", reply[2:])
                conn.sendall(reply)
        save("framing", stream)
        conn.close()
        up.close()

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/tmp/nettrust-seeds-dnsmasq.conf", "w") as f:
    f.write(ZONE)
dnsmasq = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/tmp/nettrust-seeds-dnsmasq.conf"])
time.sleep(0.5)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", 53)); t.listen()
threading.Thread(target=udp_relay, args=(u,), daemon=True).start()
threading.Thread(target=tcp_relay, args=(t,), daemon=True).start()
names = ["a.test", "alias.test", "b.test", "zero.test", "n1.test", "missing.test", "A.TeSt"]
for name in names:
    for rtype in ["A", "AAAA", "MX", "PTR"]:
        subprocess.run(["dig", "+time=2", "+tries=1", "@127.0.0.1", name, rtype], capture_output=True)
    subprocess.run(["dig", "+tcp", "+time=2", "+tries=1", "@127.0.0.1", name, "A"], capture_output=True)
subprocess.run(["dig", "+noedns", "+time=2", "+tries=1", "@127.0.0.1", "-x", "192.0.2.10"], capture_output=True)
subprocess.run(["dig", "+time=2", "+tries=1", "+dnssec", "+bufsize=512", "@127.0.0.1", "a.test"], capture_output=True)
# Several queries pipelined on one connection.
subprocess.run(["kdig", "+tcp", "+keepopen", "@127.0.0.1", "a.test", "A", "b.test", "AAAA", "alias.test", "A"],
               capture_output=True)
time.sleep(1.5)
dnsmasq.terminate()
for kind in ["query", "answer", "framing"]:
    print(kind, len(os.listdir(os.path.join("seeds", kind))))
