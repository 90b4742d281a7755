# Shared helpers for the scripts; source it.

# Prints a loopback TCP port that is free now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a TCP port accepts connections (up to 30 s).
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Starts a single-member etcd with its data in $1, clients on 127.0.0.1:$2; waits until it
# answers. Sets etcd_pid.
start_etcd() {
  local dir=$1 port=$2 peer
  peer=$(free_port)
  etcd --data-dir "$dir" --name single \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "single=http://127.0.0.1:$peer" >"$dir.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$port" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd did not start; see $dir.log" >&2
  return 1
}

# Prints the configuration of a sidecar in front of one database, on an etcd coordinator:
#   etcd_sidecar_yaml NAME PORT USERS DSN ADMIN_PORT ETCD_PORT PREFIX NODE
# NAME names the listener, executor and data source; USERS is a YAML map of users.
etcd_sidecar_yaml() {
  cat <<YAML
listeners:
  - { name: $1, address: "127.0.0.1:$2", users: $3, executor: $1 }
executors:
  - { name: $1, mode: single, data_source: $1 }
data_sources:
  - { name: $1, dsn: "$4" }
admin:
  address: 127.0.0.1:$5
coordinator:
  store: etcd
  etcd: { endpoints: ["http://127.0.0.1:$6"], prefix: $7, node_name: $8 }
YAML
}

# Reads sysbench's report on stdin and prints its rate: queries/s for oltp_point_select
# (named in $1), transactions/s for the other workloads.
sysbench_rate() {
  if [ "$1" = oltp_point_select ]; then
    awk '/queries:/ { gsub(/[(]/, "", $3); print $3; exit }'
  else
    awk '/transactions:/ { gsub(/[(]/, "", $3); print $3; exit }'
  fi
}
