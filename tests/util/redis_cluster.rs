//! A 3-master Redis Cluster for the cluster broker tests: three `redis-server`s with
//! `--cluster-enabled yes` on free loopback ports (each with its own cluster bus port and
//! config file in a directory of its own, so a killed master restarts with its slots),
//! joined by `redis-cli --cluster create ... --cluster-replicas 0`. Partial coverage is
//! allowed (`cluster-require-full-coverage no`), so a dead master stops only its slots.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{free_port, RedisServer};
use super::WAIT;

/// The three masters of a running cluster.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three masters, creates the cluster and waits for `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "ringpush-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's config files");
        let masters: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-allow-pubsubshard-when-down",
                    "yes",
                    "--dir",
                    dir.to_str().expect("a UTF-8 temp path"),
                ];
                RedisServer::start_on(port, extra.iter().map(|s| s.to_string()).collect())
            })
            .collect();
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): run scripts/deps.sh (Debian's redis-server)")
            });
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { masters, dir };
        for at in 0..3 {
            cluster.wait_ok(at);
        }
        cluster
    }

    /// The `--broker` URL: every master, comma separated, starting with master `first`.
    pub fn url(&self, first: usize) -> String {
        let n = self.masters.len();
        let list: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", self.masters[(first + i) % n].port))
            .collect();
        format!("redis://{}", list.join(","))
    }

    /// Waits until master `at` reports `cluster_state:ok`.
    pub fn wait_ok(&self, at: usize) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let info = redis::Client::open(self.masters[at].url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con));
            if info.is_ok_and(|text| text.contains("cluster_state:ok")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("master {at} never reported cluster_state:ok");
    }

    /// The slot `CLUSTER KEYSLOT` gives for `key`, asked of a live master.
    pub fn keyslot(&self, key: &str) -> u16 {
        let mut con = self.live().connection();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .expect("CLUSTER KEYSLOT")
    }

    /// The index of the master serving `slot`, from `CLUSTER SLOTS`.
    pub fn owner(&self, slot: u16) -> usize {
        let mut con = self.live().connection();
        let ranges: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut con)
            .expect("CLUSTER SLOTS")
            .into_iter()
            .map(|range| {
                let redis::Value::Array(fields) = range else {
                    panic!("a CLUSTER SLOTS range: {range:?}");
                };
                let first: u16 = redis::from_redis_value_ref(&fields[0]).expect("first slot");
                let last: u16 = redis::from_redis_value_ref(&fields[1]).expect("last slot");
                let redis::Value::Array(node) = &fields[2] else {
                    panic!("a CLUSTER SLOTS master: {fields:?}");
                };
                let host: String = redis::from_redis_value_ref(&node[0]).expect("host");
                let port: u16 = redis::from_redis_value_ref(&node[1]).expect("port");
                (first, last, (host, port))
            })
            .collect();
        let (_, _, (_, port)) = ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        self.masters
            .iter()
            .position(|m| m.port == *port)
            .expect("the owner is one of ours")
    }

    /// Subscribers of shard channel `name` on the master owning it (`PUBSUB SHARDNUMSUB`).
    pub fn shard_numsub(&self, name: &str) -> u64 {
        let owner = self.owner(self.keyslot(name));
        let mut con = self.masters[owner].connection();
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(name)
            .query(&mut con)
            .expect("PUBSUB SHARDNUMSUB");
        count
    }

    /// A master that is running (for questions about the whole cluster).
    fn live(&self) -> &RedisServer {
        self.masters
            .iter()
            .find(|m| m.running())
            .expect("a running master")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for master in &mut self.masters {
            master.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
