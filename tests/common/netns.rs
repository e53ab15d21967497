//! A network namespace joined to this one by a veth pair, for partitions.
//!
//! Inside, the namespace has `inner` (10.201.K.2); outside, this side of
//! the pair has `outer` (10.201.K.1, the address the namespace's node is
//! reached from) and `services` (10.201.K.5, where the namespace reaches
//! shared services, through forwarders bound there). A partition is a
//! blackhole route to `services` inside the namespace: the node there can
//! no longer reach Redis or the database, while nginx still reaches it.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct NetNs {
    pub name: String,
    pub inner: Ipv4Addr,
    pub outer: Ipv4Addr,
    pub services: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl NetNs {
    /// Creates the namespace and its link; `Err` says why not (no root,
    /// no namespaces on this machine).
    pub fn create() -> Result<NetNs, String> {
        let k = 1 + (std::process::id() % 250) as u8;
        let name = format!("chatp{}", std::process::id());
        let (host, peer) = (format!("cv{k}h"), format!("cv{k}n"));
        let ns = NetNs {
            name: name.clone(),
            inner: Ipv4Addr::new(10, 201, k, 2),
            outer: Ipv4Addr::new(10, 201, k, 1),
            services: Ipv4Addr::new(10, 201, k, 5),
        };
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host]);
        ip(&["netns", "add", &name])?;
        let outer = format!("{}/24", ns.outer);
        let services = format!("{}/32", ns.services);
        let inner = format!("{}/24", ns.inner);
        let steps: [&[&str]; 8] = [
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &name],
            &["addr", "add", &outer, "dev", &host],
            &["addr", "add", &services, "dev", &host],
            &["link", "set", &host, "up"],
            &["-n", &name, "addr", "add", &inner, "dev", &peer],
            &["-n", &name, "link", "set", &peer, "up"],
            &["-n", &name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            // dropping `ns` on failure removes what was made
            ip(step)?;
        }
        Ok(ns)
    }

    /// Cuts the namespace off from the services address.
    pub fn partition(&self) {
        let to = format!("{}/32", self.services);
        ip(&["-n", &self.name, "route", "add", "blackhole", &to]).expect("partition");
    }

    /// Undoes [`partition`](Self::partition).
    pub fn heal(&self) {
        let to = format!("{}/32", self.services);
        ip(&["-n", &self.name, "route", "del", "blackhole", &to]).expect("heal");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
