// Drives Tandem with Node's mysql2: `query` (text protocol) and `execute` (prepared).
// Usage: node check_clients.js PORT USER PASSWORD DATABASE
'use strict';
const mysql = require('mysql2/promise');

const [port, user, password, database] = process.argv.slice(2);

function check(cond, what) {
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
}

(async () => {
  const c = await mysql.createConnection({
    host: '127.0.0.1', port: Number(port), user, password, database,
    charset: 'UTF8MB4_GENERAL_CI', supportBigNumbers: true, bigNumberStrings: true,
    dateStrings: true, multipleStatements: true,
  });
  await c.query('DROP TABLE IF EXISTS js_types');
  await c.query(`CREATE TABLE js_types (id INT PRIMARY KEY, biu BIGINT UNSIGNED, d DECIMAL(65,30),
                 t TIME(6), s VARCHAR(50), b VARBINARY(20), j JSON) CHARACTER SET utf8mb4`);
  const row = [1, '18446744073709551615', '-1234567890.123456789012345678901234567890',
    '-34:56:07.891234', 'naïve 😀', Buffer.from([0, 255, 1, 254]), '{"k": [1, 2]}'];
  await c.query('INSERT INTO js_types VALUES (?, ?, ?, ?, ?, ?, ?)', row);
  const [q] = await c.query('SELECT * FROM js_types WHERE id = 1');
  check(q[0].biu === row[1], `query BIGINT UNSIGNED: ${q[0].biu}`);
  check(q[0].d === row[2], `query DECIMAL: ${q[0].d}`);
  check(q[0].t === row[3], `query TIME: ${q[0].t}`);
  check(q[0].s === row[4], `query utf8mb4: ${q[0].s}`);
  check(Buffer.compare(q[0].b, row[5]) === 0, 'query VARBINARY');
  // MariaDB's JSON is a LONGTEXT alias, so drivers see text.
  const j = typeof q[0].j === 'string' ? JSON.parse(q[0].j) : q[0].j;
  check(JSON.stringify(j) === JSON.stringify({ k: [1, 2] }), `query JSON: ${JSON.stringify(q[0].j)}`);

  const [e] = await c.execute('SELECT * FROM js_types WHERE id = ?', [1]);
  check(e[0].biu === row[1], `execute BIGINT UNSIGNED: ${e[0].biu}`);
  check(e[0].d === row[2], `execute DECIMAL: ${e[0].d}`);
  check(e[0].t === row[3], `execute TIME: ${e[0].t}`);
  check(e[0].s === row[4], `execute utf8mb4: ${e[0].s}`);
  check(Buffer.compare(e[0].b, row[5]) === 0, 'execute VARBINARY');

  for (let i = 2; i < 12; i++) {
    await c.execute('INSERT INTO js_types (id, s) VALUES (?, ?)', [i, `r${i}`]);
  }
  const [n] = await c.execute('SELECT COUNT(*) AS n FROM js_types WHERE id >= ?', [2]);
  check(Number(n[0].n) === 10, `execute loop count ${n[0].n}`);

  const [multi] = await c.query('SELECT 1 AS a; SELECT 2 AS b');
  check(multi.length === 2 && multi[1][0].b === 2, 'multi-statement results');

  try {
    await c.execute('SELECT * FROM no_such_table WHERE id = ?', [1]);
    check(false, 'error expected');
  } catch (err) {
    check(err.errno === 1146 && err.sqlState === '42S02', `missing table: ${err.errno} ${err.sqlState}`);
  }
  await c.beginTransaction();
  await c.execute('UPDATE js_types SET s = ? WHERE id = ?', ['gone', 1]);
  await c.rollback();
  const [after] = await c.execute('SELECT s FROM js_types WHERE id = ?', [1]);
  check(after[0].s === row[4], 'rollback');

  // Tandem's own functions through `execute` (prepared) and `query`.
  const [b] = await c.execute('SELECT tandem_begin(?)', [30000]);
  const xid = Object.values(b[0])[0];
  check(typeof xid === 'string' && xid.length > 0, `execute tandem_begin: ${JSON.stringify(b)}`);
  const [st] = await c.execute('SELECT tandem_status(?)', [xid]);
  check(Object.values(st[0])[0] === 'Begin', `execute tandem_status: ${JSON.stringify(st)}`);
  const [cm] = await c.query(`SELECT tandem_commit('${xid}')`);
  check(Object.values(cm[0])[0] === 'Committed', `query tandem_commit: ${JSON.stringify(cm)}`);

  let refused = false;
  try {
    await mysql.createConnection({ host: '127.0.0.1', port: Number(port), user, password: 'wrong' });
  } catch (err) {
    refused = err.errno === 1045;
  }
  check(refused, 'wrong password refused with 1045');
  await c.end();
  console.log('node mysql2: ok');
})().catch((err) => {
  console.error('FAILED:', err);
  process.exit(1);
});
