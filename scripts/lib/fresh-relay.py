#!/usr/bin/env python3
"""Byte relay between a network namespace without a route out and the host (fresh-check.sh).

  fresh-relay.py out DIR HOST:PORT...   on the host: DIR/HOST_PORT.sock -> TCP HOST:PORT
  fresh-relay.py in DIR IP=HOST:PORT... in the namespace: TCP IP:PORT -> DIR/HOST_PORT.sock

A unix socket in the filesystem crosses network namespaces, so the namespace reaches the
package registries (apt, crates.io) while libvirtd's loopback listener stays its own. Bytes
only: TLS goes end to end, names resolve to IP in the namespace's /etc/hosts.
"""
import os
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(listener, connect):
    while True:
        client, _ = listener.accept()
        threading.Thread(target=bridge, args=(client, connect), daemon=True).start()


def bridge(client, connect):
    try:
        upstream = connect()
    except OSError as e:
        print(f"fresh-relay: {e}", file=sys.stderr)
        client.close()
        return
    t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    t.start()
    pump(client, upstream)
    t.join()
    client.close()
    upstream.close()


def sock_path(directory, target):
    return os.path.join(directory, target.replace(":", "_") + ".sock")


def main():
    mode, directory, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    threads = []
    for spec in specs:
        if mode == "out":
            host, port = spec.rsplit(":", 1)
            path = sock_path(directory, spec)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)

            def connect(host=host, port=int(port)):
                s = socket.create_connection((host, port), timeout=30)
                s.settimeout(None)
                return s
        else:
            ip, target = spec.split("=", 1)
            port = int(target.rsplit(":", 1)[1])
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((ip, port))
            path = sock_path(directory, target)

            def connect(path=path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
        listener.listen(64)
        t = threading.Thread(target=serve, args=(listener, connect), daemon=True)
        t.start()
        threads.append(t)
    # Every listener is up: the caller waits for this file before anything connects.
    open(os.path.join(directory, "ready-" + mode), "w").close()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
