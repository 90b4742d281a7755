"""Drives Tandem with Python's MySQL drivers: PyMySQL (text protocol) and
mysql-connector-python with a prepared cursor (binary protocol).

Usage: check_clients.py PORT USER PASSWORD DATABASE
Exits non-zero with a message on the first failed check.
"""
import datetime
import decimal
import sys

import mysql.connector
import pymysql

port, user, password, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


ROW = (
    1,
    -9223372036854775808,
    18446744073709551615,
    decimal.Decimal("-12345678901234567890.123456789"),
    datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
    datetime.date(1000, 1, 1),
    "héllo 😀 𝄞",
    bytes(range(256)),
)

# --- PyMySQL ---------------------------------------------------------------------------
conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                       database=db, charset="utf8mb4", autocommit=True,
                       client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
cur = conn.cursor()
cur.execute("DROP TABLE IF EXISTS py_types")
cur.execute("""CREATE TABLE py_types (id INT PRIMARY KEY, bi BIGINT, biu BIGINT UNSIGNED,
               d DECIMAL(40,9), dt DATETIME(6), da DATE, s VARCHAR(50), b BLOB)
               CHARACTER SET utf8mb4""")
cur.execute("INSERT INTO py_types VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", ROW)
cur.execute("SELECT * FROM py_types WHERE id = %s", (1,))
got = cur.fetchone()
check(got == ROW, f"PyMySQL round trip: {got!r}")

conn.begin()
cur.execute("UPDATE py_types SET s = 'rolled back' WHERE id = 1")
conn.rollback()
cur.execute("SELECT s FROM py_types WHERE id = 1")
check(cur.fetchone()[0] == ROW[6], "PyMySQL rollback")

cur.execute("SELECT 1; SELECT 2, 3")
check(cur.fetchall() == ((1,),), "first result of a multi-statement")
check(cur.nextset(), "a second result set")
check(cur.fetchall() == ((2, 3),), "second result of a multi-statement")

try:
    cur.execute("SELEC 1")
    check(False, "syntax error expected")
except pymysql.err.ProgrammingError as e:
    check(e.args[0] == 1064, f"syntax error code: {e.args}")

cur.execute("SELECT LAST_INSERT_ID(77)")
cur.execute("SELECT LAST_INSERT_ID()")
check(cur.fetchone()[0] == 77, "LAST_INSERT_ID in session")

try:
    pymysql.connect(host="127.0.0.1", port=port, user=user, password="wrong", database=db)
    check(False, "wrong password must be refused")
except pymysql.err.OperationalError as e:
    check(e.args[0] == 1045, f"wrong password code: {e.args}")
conn.close()

# --- mysql-connector-python, prepared cursor --------------------------------------------
cn = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password,
                             database=db, use_pure=True, charset="utf8mb4",
                             collation="utf8mb4_general_ci")
pc = cn.cursor(prepared=True)
row2 = (2,) + ROW[1:]
pc.execute("INSERT INTO py_types VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row2)
cn.commit()
pc.execute("SELECT id, bi, biu, d, dt, da, s, b FROM py_types WHERE id = %s", (2,))
got = pc.fetchone()
got = tuple(bytes(v) if isinstance(v, (bytearray,)) else v for v in got)
check(got == row2, f"connector prepared round trip: {got!r}")
for i in range(3, 23):
    pc.execute("INSERT INTO py_types (id, s) VALUES (%s, %s)", (i, f"row {i}"))
cn.commit()
pc.execute("SELECT COUNT(*) FROM py_types WHERE id >= %s", (3,))
check(pc.fetchone()[0] == 20, "prepared insert loop")
try:
    pc.execute("INSERT INTO py_types (id) VALUES (%s)", (2,))
    check(False, "duplicate key expected")
except mysql.connector.Error as e:
    check(e.errno == 1062 and e.sqlstate == "23000", f"duplicate key: {e.errno} {e.sqlstate}")
pc.close()
cn.close()
print("python clients: ok")
