//! Outbound connections of a pool's backends, confined with nftables (issue 9).
//!
//! Landlock's network rules match ports, not addresses, so the connect side is an nftables
//! table of its own per pool, `inet gatehouse_<first uid>_<last uid>`, whose output chain
//! looks only at sockets owned by the pool's uid range (`meta skuid`):
//!
//! - replies on connections already made (Gatehouse → backend) pass;
//! - each backend may reach its own port on loopback (a set of `uid . port`, updated as
//!   backends start and stop), and nothing else of the host;
//! - the DNS resolvers of `/etc/resolv.conf` on port 53 and the pool's `egress.allow`
//!   entries pass;
//! - loopback, private, shared, link-local (the cloud metadata address), multicast and
//!   reserved ranges, and every address of the host itself, are **rejected** (a TCP reset or
//!   an ICMP error, so a connect fails at once instead of hanging);
//! - everything else (the public internet) passes.
//!
//! The table is replaced whole, atomically, at start (a crashed Gatehouse's table goes with
//! it) and deleted at shutdown. Rules are written by [`ruleset`], a pure function.

use std::net::{IpAddr, ToSocketAddrs};
#[cfg(test)]
use std::path::Path;
use std::process::Stdio;

use gatehouse_config::{BackendPool, EgressTarget, UidRange};

/// Destinations no backend may reach unless `egress.allow` names them.
const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
const DENIED_V6: &[&str] = &[
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// One allowed destination, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// The network's address (a host's resolved address, for a name).
    pub addr: IpAddr,
    /// The prefix length: 32 or 128 for one address.
    pub prefix: u8,
    /// The one port allowed (TCP or UDP), or `None` for every port. A host name without a
    /// port allows 443.
    pub port: Option<u16>,
}

/// A pool's nftables table.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
    range: (u32, u32),
    allow: Vec<Allow>,
    resolvers: Vec<IpAddr>,
}

impl Firewall {
    /// The table for `pool` (which must have `uids`), with its `egress.allow` resolved and
    /// the host's resolvers. `Err` names an entry that does not resolve.
    pub fn for_pool(pool: &BackendPool, range: &UidRange) -> Result<Self, String> {
        let mut allow = Vec::new();
        for rule in &pool.egress {
            match &rule.target {
                EgressTarget::Net { addr, prefix } => allow.push(Allow {
                    addr: *addr,
                    prefix: *prefix,
                    port: rule.port,
                }),
                EgressTarget::Host(host) => {
                    let port = rule.port.unwrap_or(443);
                    let addrs = (host.as_str(), port).to_socket_addrs().map_err(|e| {
                        format!(
                            "{}: backends.{}.egress.allow: `{}` does not resolve: {e}",
                            rule.origin, pool.name, rule.written
                        )
                    })?;
                    for a in addrs {
                        let prefix = if a.is_ipv4() { 32 } else { 128 };
                        allow.push(Allow {
                            addr: a.ip(),
                            prefix,
                            port: Some(port),
                        });
                    }
                }
            }
        }
        allow.dedup();
        Ok(Firewall {
            table: format!("gatehouse_{}_{}", range.first, range.last),
            range: (range.first, range.last),
            allow,
            resolvers: resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
        })
    }

    /// Also lets the pool's backends reach Gatehouse's LLM relay at `addr` (issue 12): the
    /// one Gatehouse address a backend may connect to.
    pub fn with_relay(mut self, addr: std::net::SocketAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        self.allow.insert(
            0,
            Allow {
                addr: addr.ip(),
                prefix,
                port: Some(addr.port()),
            },
        );
        self
    }

    /// The table's name, `gatehouse_<first uid>_<last uid>` (in the `inet` family).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The pool's `egress.allow` entries, resolved, for the start-up log line.
    pub fn allowed(&self) -> &[Allow] {
        &self.allow
    }

    /// Replaces the table (atomically) with this pool's rules.
    pub async fn install(&self) -> Result<(), String> {
        nft(&ruleset(
            &self.table,
            self.range,
            &self.allow,
            &self.resolvers,
        ))
        .await
    }

    /// Deletes the table (at shutdown).
    pub async fn remove(&self) -> Result<(), String> {
        nft(&format!(
            "table inet {t}\ndelete table inet {t}\n",
            t = self.table
        ))
        .await
    }

    /// Lets `uid` reach its own `port` on loopback (a backend starts).
    pub async fn open_own_port(&self, uid: u32, port: u16) -> Result<(), String> {
        nft(&format!(
            "add element inet {} own {{ {uid} . {port} }}\n",
            self.table
        ))
        .await
    }

    /// Takes that back (the backend stopped). Missing elements are fine.
    pub async fn close_own_port(&self, uid: u32, port: u16) -> Result<(), String> {
        // `destroy` (nft ≥ 1.0.8) would not fail on a missing element; Debian 12 has 1.0.6,
        // so add it first, then delete: both succeed whether or not it was there.
        nft(&format!(
            "add element inet {t} own {{ {uid} . {port} }}\ndelete element inet {t} own {{ {uid} . {port} }}\n",
            t = self.table
        ))
        .await
    }
}

/// Whether nftables can be used here: `nft --check` accepts a table like the ones
/// Gatehouse writes (root with CAP_NET_ADMIN, and a kernel with sets, `fib` and `reject`).
/// Changes nothing. `Err` says what is missing and how to get it.
pub fn check_available_blocking() -> Result<(), String> {
    let probe = ruleset("gatehouse_probe", (1, 1), &[], &[]);
    nft_blocking(&probe, true).map_err(|e| {
        if e.contains("cannot run nft") {
            "nftables is not installed (`nft` not found; Debian: apt-get install nftables)"
                .to_string()
        } else {
            format!("nftables cannot be used: {e}")
        }
    })
}

/// Runs `nft -f -` with `script` on stdin, off the async threads.
async fn nft(script: &str) -> Result<(), String> {
    let script = script.to_string();
    tokio::task::spawn_blocking(move || nft_blocking(&script, false))
        .await
        .unwrap_or_else(|e| Err(format!("nft: {e}")))
}

/// Runs `nft [-c] -f -` with `script` on stdin.
fn nft_blocking(script: &str, check_only: bool) -> Result<(), String> {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new("nft");
    if check_only {
        cmd.arg("-c");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .env_clear()
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        Err(format!("nft failed ({}): {}", out.status, first.trim()))
    }
}

/// The `nameserver` addresses of a resolv.conf.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // A scoped IPv6 address (`fe80::1%eth0`) loses its scope in a rule.
                .and_then(|a| a.split('%').next())
                .and_then(|a| a.parse().ok())
        })
        .collect();
    out.dedup();
    out
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// The whole table as an `nft -f` script: created if missing, deleted, and written anew, in
/// one transaction (a script with an error changes nothing).
///
/// The output hook only dispatches on the socket's uid (`jump person`), and every verdict
/// is taken in `person`: the resets and ICMP errors that `reject` generates have no socket,
/// so an "other uids: accept" rule would let them fall into the rejects and turn a fast
/// refusal into a 10 s hang (measured: docs/confinement.md).
pub fn ruleset(table: &str, range: (u32, u32), allow: &[Allow], resolvers: &[IpAddr]) -> String {
    let (first, last) = range;
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("table inet {table}"));
    line(format!("delete table inet {table}"));
    line(format!("table inet {table} {{"));
    line("  set own { type uid . inet_service; }".into());
    line("  chain egress {".into());
    line("    type filter hook output priority filter; policy accept;".into());
    line(format!("    meta skuid {first}-{last} jump person"));
    line("  }".into());
    line("  chain person {".into());
    line("    ct state established,related accept".into());
    line("    ip daddr 127.0.0.1 meta skuid . tcp dport @own accept".into());
    line("    ip6 daddr ::1 meta skuid . tcp dport @own accept".into());
    for r in resolvers {
        line(format!(
            "    {} daddr {r} meta l4proto {{ tcp, udp }} th dport 53 accept",
            family(r)
        ));
    }
    for a in allow {
        let net = format!("{}/{}", a.addr, a.prefix);
        line(match a.port {
            Some(p) => format!(
                "    {} daddr {net} meta l4proto {{ tcp, udp }} th dport {p} accept",
                family(&a.addr)
            ),
            None => format!("    {} daddr {net} accept", family(&a.addr)),
        });
    }
    let denied = [
        format!("ip daddr {{ {} }}", DENIED_V4.join(", ")),
        format!("ip6 daddr {{ {} }}", DENIED_V6.join(", ")),
        // Every address of this host (its public one too): no local service is reachable.
        "fib daddr type local".to_string(),
    ];
    for d in denied {
        line(format!("    {d} reject with tcp reset"));
        line(format!("    {d} reject with icmpx admin-prohibited"));
    }
    line("  }".into());
    line("}".into());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let conf = "# comment\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            resolvers(conf),
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    fn allow(addr: &str, prefix: u8, port: Option<u16>) -> Allow {
        Allow {
            addr: addr.parse().unwrap(),
            prefix,
            port,
        }
    }

    #[test]
    fn ruleset_matches_only_the_pool_and_allows_before_it_rejects() {
        let allow = [
            allow("127.0.0.1", 32, Some(9100)),
            allow("10.1.0.0", 16, None),
        ];
        let text = ruleset(
            "gatehouse_1_2",
            (200000, 200999),
            &allow,
            &["127.0.0.53".parse().unwrap()],
        );
        assert!(text.starts_with("table inet gatehouse_1_2\ndelete table inet gatehouse_1_2\n"));
        assert!(text.contains("meta skuid 200000-200999 jump person"));
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
        };
        let first_reject = pos("reject");
        for allowed in [
            "ct state established,related accept",
            "@own accept",
            "ip daddr 127.0.0.53 meta l4proto { tcp, udp } th dport 53 accept",
            "ip daddr 127.0.0.1/32 meta l4proto { tcp, udp } th dport 9100 accept",
            "ip daddr 10.1.0.0/16 accept",
        ] {
            assert!(pos(allowed) < first_reject, "{allowed}");
        }
        for denied in [
            "127.0.0.0/8",
            "169.254.0.0/16",
            "::1/128",
            "fe80::/10",
            "fib daddr type local",
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(denied))
                .unwrap_or_default();
            assert!(line.ends_with("reject with tcp reset"), "{denied}: {line}");
        }
    }

    #[test]
    fn nft_accepts_the_ruleset() {
        if !nix::unistd::Uid::effective().is_root() || !Path::new("/usr/sbin/nft").exists() {
            eprintln!("SKIPPED: needs root and nftables (tests/run.sh installs it; CI is root)");
            return;
        }
        let allow = [allow("127.0.0.1", 32, Some(9100)), allow("fd00::", 8, None)];
        let text = ruleset(
            "gatehouse_test",
            (1, 2),
            &allow,
            &["10.255.255.53".parse().unwrap(), "::1".parse().unwrap()],
        );
        nft_blocking(&text, true).unwrap_or_else(|e| panic!("{e}\n{text}"));
        check_available_blocking().unwrap();
    }
}
