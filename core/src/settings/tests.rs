use super::*;

fn parse(text: &str) -> (Result<Settings, LoadError>, Vec<String>) {
    let mut unknown = Vec::new();
    let result = Settings::from_yaml(text, "test.yaml", |k| unknown.push(k.to_string()));
    (result, unknown)
}

#[test]
fn empty_text_gives_the_embedded_defaults() {
    let (settings, _) = parse("");
    let settings = settings.unwrap();
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.proxy.listen, vec!["127.0.0.1:8080"]);
    assert_eq!(settings.dns.listen, vec!["127.0.0.1:5353"]);
    assert!(settings.validate().is_ok());
}

#[test]
fn unknown_keys_are_reported_and_ignored() {
    let (settings, unknown) =
        parse("threads: 2\nmy_extension: 1\ndns:\n  tld: dev\n  colour: red\n");
    let settings = settings.unwrap();
    assert_eq!(settings.threads, 2);
    assert_eq!(settings.dns.tld, "dev");
    assert_eq!(unknown, vec!["my_extension", "dns.colour"]);
}

#[test]
fn wrong_types_name_the_key() {
    let (result, _) = parse("threads: many\n");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("threads"), "{message}");
}

#[test]
fn validation_names_each_bad_key() {
    let (settings, _) = parse(
        "threads: 0\nproxy:\n  listen: [\"127.0.0.1:99999\"]\ndns:\n  tld: \"bad tld\"\n  addresses: [nope]\n",
    );
    let errors = settings.unwrap().validate().unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["threads", "proxy.listen[0]", "dns.tld", "dns.addresses[0]"]
    );
}

#[test]
fn clashing_tcp_ports_are_rejected() {
    let (settings, _) =
        parse("proxy:\n  listen: [\"0.0.0.0:8053\"]\ndns:\n  listen: [\"127.0.0.1:8053\"]\n");
    let errors = settings.unwrap().validate().unwrap_err();
    assert_eq!(errors[0].key, "dns.listen[0]");
    assert!(errors[0].problem.contains("clashes with proxy.listen[0]"));
}

#[test]
fn tls_listeners_may_be_none_but_claim_their_ports() {
    let (settings, _) = parse("proxy:\n  tls_listen: []\n");
    let settings = settings.unwrap();
    settings.validate().unwrap();
    assert!(settings.proxy_tls_listen().is_empty());
    assert_eq!(
        Settings::default().proxy_tls_listen(),
        vec!["127.0.0.1:8443".parse::<std::net::SocketAddr>().unwrap()]
    );

    let (settings, _) = parse(
        "proxy:\n  listen: [\"127.0.0.1:8080\"]\n  tls_listen: [\"0.0.0.0:8080\", \"nope\"]\n",
    );
    let errors = settings.unwrap().validate().unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["proxy.tls_listen[0]", "proxy.tls_listen[1]"]);
    assert!(errors[0].problem.contains("clashes with proxy.listen[0]"));
}

#[test]
fn an_upstream_that_is_dnsd_itself_is_rejected() {
    let (settings, _) = parse(
        "dns:\n  listen: [\"127.0.0.1:5353\"]\n  upstreams: [\"127.0.0.53\", \"127.0.0.1:5353\"]\n",
    );
    let errors = settings.unwrap().validate().unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "dns.upstreams[1]");
}

#[test]
fn resolved_settings_round_trip_through_yaml() {
    let settings = Settings::default().resolve();
    let (again, unknown) = parse(&settings.to_yaml());
    assert_eq!(again.unwrap(), settings);
    assert!(unknown.is_empty());
}
