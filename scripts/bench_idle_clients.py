"""Opens N authenticated client connections to Tandem and holds them idle.

Usage: bench_idle_clients.py PORT N READY_FILE
Touches READY_FILE once all connections are open, then sleeps until killed.
"""
import pathlib
import sys
import time

import pymysql

port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = [pymysql.connect(host="127.0.0.1", port=port, user="sbtest", password="sbtest")
         for _ in range(n)]
pathlib.Path(ready).touch()
while True:
    time.sleep(60)
