#!/usr/bin/env python3
"""A plain-socket client for pier, in the style of kn-sock's and python_tcp's clients.

    python3 examples/echo_client.py [HOST] [PORT] [MESSAGE]

Sends MESSAGE once with no framing (pier's default `raw` framing), reads once, prints the reply.
"""
import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
message = sys.argv[3] if len(sys.argv) > 3 else "Hello TCP"

with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(message.encode("utf-8"))
    print(s.recv(1024).decode("utf-8", errors="replace"))
