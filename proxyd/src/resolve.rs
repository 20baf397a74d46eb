//! A site's target as addresses to connect to. An IP target is used as is; a hostname
//! goes through the system resolver (getaddrinfo, so `/etc/hosts` counts), and its
//! answer is kept for [`RESOLVE_CACHE_TTL`] so that a burst of requests costs one lookup
//! rather than one each, while a changed address is still picked up within seconds.
//! Failures are not kept: the next request asks again.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sites::{Target, TargetHost};

/// How long to wait for the system resolver.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a hostname target's addresses are reused.
pub const RESOLVE_CACHE_TTL: Duration = Duration::from_secs(5);

/// A target's addresses, in the resolver's order.
pub type Addresses = Arc<[SocketAddr]>;

/// Resolves targets, keeping hostname answers for a while.
#[derive(Debug)]
pub struct Resolver {
    ttl: Duration,
    cache: Mutex<HashMap<Target, Cached>>,
}

#[derive(Debug)]
struct Cached {
    addrs: Addresses,
    expires: Instant,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(RESOLVE_CACHE_TTL)
    }
}

impl Resolver {
    /// A resolver keeping answers for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `target`, or why there are none (for the 502 page).
    pub async fn resolve(&self, target: &Target) -> Result<Addresses, String> {
        self.resolve_at(target, Instant::now(), system_lookup).await
    }

    /// [`Resolver::resolve`] at the time `now`, asking `lookup` on a miss.
    async fn resolve_at<F, Fut>(
        &self,
        target: &Target,
        now: Instant,
        lookup: F,
    ) -> Result<Addresses, String>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
    {
        let name = match &target.host {
            TargetHost::Ip(ip) => return Ok(Arc::from([SocketAddr::new(*ip, target.port)])),
            TargetHost::Name(name) => name,
        };
        if let Some(cached) = self.lock().get(target)
            && cached.expires > now
        {
            return Ok(cached.addrs.clone());
        }
        let addrs: Addresses = lookup(name.clone(), target.port).await?.into();
        let mut cache = self.lock();
        // Entries of unlinked sites or changed targets go once they expire.
        cache.retain(|_, cached| cached.expires > now);
        cache.insert(
            target.clone(),
            Cached {
                addrs: addrs.clone(),
                expires: now + self.ttl,
            },
        );
        Ok(addrs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Cached>> {
        // Entries are inserted whole: a panic elsewhere cannot leave one torn.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Asks the system resolver, bounded by [`RESOLVE_TIMEOUT`].
async fn system_lookup(name: String, port: u16) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((name.as_str(), port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(format!("{name} could not be resolved ({e})")),
        Err(_) => {
            return Err(format!(
                "resolving {name} took longer than {}s",
                RESOLVE_TIMEOUT.as_secs()
            ));
        }
    };
    if addrs.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn ip_targets_need_no_resolver_and_bad_names_explain_themselves() {
        let resolver = Resolver::default();
        let ip = Target::parse("127.0.0.1:9").unwrap();
        assert_eq!(
            &*resolver.resolve(&ip).await.unwrap(),
            &["127.0.0.1:9".parse().unwrap()]
        );
        let bad = Target::parse("no-such-host.invalid:80").unwrap();
        assert!(
            resolver
                .resolve(&bad)
                .await
                .unwrap_err()
                .contains("no-such-host.invalid")
        );
    }

    #[tokio::test]
    async fn hostname_answers_are_reused_until_they_expire_and_failures_never() {
        let resolver = Resolver::new(Duration::from_secs(5));
        let target = Target::parse("app.internal:3000").unwrap();
        let lookups = AtomicUsize::new(0);
        let answer = |result: Result<Vec<SocketAddr>, String>| {
            let lookups = &lookups;
            move |name: String, port: u16| {
                assert_eq!((name.as_str(), port), ("app.internal", 3000));
                lookups.fetch_add(1, Ordering::SeqCst);
                std::future::ready(result)
            }
        };
        let first: SocketAddr = "10.0.0.1:3000".parse().unwrap();
        let second: SocketAddr = "10.0.0.2:3000".parse().unwrap();
        let t0 = Instant::now();

        let failed = resolver.resolve_at(&target, t0, answer(Err("down".into())));
        assert_eq!(failed.await.unwrap_err(), "down");
        let got = resolver.resolve_at(&target, t0, answer(Ok(vec![first])));
        assert_eq!(&*got.await.unwrap(), &[first]);
        assert_eq!(lookups.load(Ordering::SeqCst), 2, "a failure is not kept");

        let later = t0 + Duration::from_secs(4);
        let got = resolver.resolve_at(&target, later, answer(Ok(vec![second])));
        assert_eq!(&*got.await.unwrap(), &[first], "still cached");
        assert_eq!(lookups.load(Ordering::SeqCst), 2);

        let expired = t0 + Duration::from_secs(5);
        let got = resolver.resolve_at(&target, expired, answer(Ok(vec![second])));
        assert_eq!(&*got.await.unwrap(), &[second]);
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
    }
}
