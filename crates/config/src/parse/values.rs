//! Pure parsers for single values. Each returns the message tail on failure (the caller
//! adds the place and the key path). None of them puts a secret's value in a message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use url::{Host, Url};

use crate::SameSite;

const KEYGEN_HINT: &str = "make one with `gatehouse keygen` or `head -c32 /dev/urandom | base64`";

/// A listen address: `:443` (all IPv4 interfaces), `0.0.0.0:443`, `127.0.0.1:8443`,
/// `[::]:443`, `localhost:8443`. No DNS: other host names are refused.
pub(super) fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let expected = "expected `:443`, `0.0.0.0:443`, `127.0.0.1:8443` or `[::]:443`";
    if let Some(port) = s.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .map_err(|_| format!("`{s}` is not a listen address ({expected})"));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if s.parse::<u16>().is_ok() {
        return Err(format!(
            "`{s}` is not a listen address; write `:{s}` for all interfaces"
        ));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .map_err(|_| format!("`{s}` is not a listen address ({expected})")),
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => Err(format!(
            "`{s}`: listen on an IP address (or `localhost`), not a host name ({expected})"
        )),
        _ => Err(format!("`{s}` is not a listen address ({expected})")),
    }
}

/// Whether `url`'s host is loopback: 127.0.0.0/8, ::1 or `localhost`.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The URL as it may appear in a message: without a password.
pub(super) fn shown(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, and this one has one.
            let _ = url.set_password(Some("[redacted]"));
            url.to_string()
        }
        _ => s.to_string(),
    }
}

/// An http(s) URL with a host, otherwise `"x" is not a URL (expected http:// or https://)`.
pub(super) fn http_url(s: &str) -> Result<Url, String> {
    let not_url = || {
        format!(
            "\"{}\" is not a URL (expected http:// or https://)",
            shown(s)
        )
    };
    let url = Url::parse(s.trim()).map_err(|_| not_url())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(not_url());
    }
    Ok(url)
}

/// A URL Gatehouse itself is reached at or trusts (the authenticate service, the issuer):
/// https, or http only on a loopback host.
pub(super) fn secure_url(s: &str) -> Result<Url, String> {
    let url = http_url(s)?;
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(format!(
            "\"{}\" uses http on a non-loopback host; use https (http is allowed only for \
             127.0.0.1, ::1 and localhost)",
            shown(s)
        ));
    }
    Ok(url)
}

/// `authenticate_service_url`: a secure URL with no path, query or fragment.
pub(super) fn service_url(s: &str) -> Result<Url, String> {
    let url = secure_url(s)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "\"{}\" must be just scheme and host (like https://auth.example.com), with no path \
             or query; Gatehouse adds its own paths",
            shown(s)
        ));
    }
    Ok(url)
}

/// `cookie_expire` and other durations: `14h`, `30m`, `1h30m`, `14h0m0s`; more than zero.
pub(super) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|_| format!("`{s}` is not a duration (write it like `14h`, `30m` or `1h30m`)"))?;
    if d.is_zero() {
        return Err("must be longer than 0 (like `14h`)".to_string());
    }
    Ok(d)
}

/// Base64 in the standard or the URL-safe alphabet, padded or not.
pub(super) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let s = s.trim();
    GeneralPurpose::new(&alphabet::STANDARD, config)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, config).decode(s))
        .ok()
}

/// `cookie_secret`: base64 of exactly 32 bytes. Messages give the decoded length, never
/// the value.
pub(super) fn cookie_secret(s: &str) -> Result<[u8; 32], String> {
    let Some(bytes) = decode_base64(s) else {
        return Err(format!(
            "is not valid base64; it must be 32 random bytes, base64-encoded ({KEYGEN_HINT})"
        ));
    };
    let len = bytes.len();
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| format!("decodes to {len} bytes but must be exactly 32 ({KEYGEN_HINT})"))
}

pub(super) fn cookie_secret_missing() -> String {
    format!(
        "cookie_secret is required: 32 random bytes, base64-encoded, that seal the session \
         cookies; {KEYGEN_HINT}, and put it here or in the COOKIE_SECRET environment variable"
    )
}

/// `signing_key`: base64 of a PEM private key (Pomerium's form), or the PEM itself.
pub(super) fn signing_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.starts_with("-----BEGIN") {
        return Ok(s.to_string());
    }
    let help = "it must be the base64 of a PEM private key, like the output of \
                `openssl ecparam -genkey -name prime256v1 -noout | base64 -w0`";
    let pem = decode_base64(s)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| format!("is not valid base64; {help}"))?;
    if !pem.contains("-----BEGIN") {
        return Err(format!(
            "decodes to something that is not PEM (no `-----BEGIN` line); {help}"
        ));
    }
    Ok(pem)
}

/// `cookie_name`: an RFC 6265 token (visible ASCII except separators).
pub(super) fn cookie_name(s: &str) -> Result<String, String> {
    let bad = |c: char| !c.is_ascii_graphic() || "()<>@,;:\\\"/[]?={}".contains(c);
    if s.is_empty() || s.chars().any(bad) {
        return Err(format!(
            "`{s}` is not a valid cookie name (letters, digits and `!#$%&'*+-.^_`|~` only, \
             no spaces or separators)"
        ));
    }
    Ok(s.to_string())
}

/// `cookie_domain`: a host name, optionally with a leading dot. Stored lower-case.
pub(super) fn cookie_domain(s: &str) -> Result<String, String> {
    let domain = s.trim().to_ascii_lowercase();
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if domain.trim_start_matches('.').is_empty() || !domain.chars().all(ok) {
        return Err(format!("`{s}` is not a domain (like `example.com`)"));
    }
    Ok(domain)
}

pub(super) fn same_site(s: &str) -> Result<SameSite, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "lax" => Ok(SameSite::Lax),
        "strict" => Ok(SameSite::Strict),
        "none" => Ok(SameSite::None),
        _ => Err(format!("`{s}` is not one of lax, strict, none")),
    }
}

pub(super) fn log_level(s: &str) -> Result<String, String> {
    let level = s.trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(level),
        _ => Err(format!(
            "`{s}` is not one of trace, debug, info, warn, error"
        )),
    }
}

/// A domain in `allowed_domains` or a policy: lower-case, no `@`, no spaces.
pub(super) fn domain(s: &str) -> Result<String, String> {
    let d = s.trim().to_ascii_lowercase();
    if d.contains('@') {
        return Err(format!("`{s}` looks like an email address, not a domain"));
    }
    if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') {
        return Err(format!("`{s}` is not a domain (like `example.com`)"));
    }
    Ok(d)
}

/// An email in `allowed_users` or a policy: lower-case, one `@` with text on both sides.
pub(super) fn email(s: &str) -> Result<String, String> {
    let e = s.trim().to_ascii_lowercase();
    match e.split_once('@') {
        Some((user, host)) if !user.is_empty() && !host.is_empty() && !host.contains('@') => Ok(e),
        _ => Err(format!(
            "`{s}` is not an email address (like `alice@example.com`)"
        )),
    }
}

/// A group name or id in `allowed_groups`: as written (group ids are case-sensitive), no
/// white space around it.
pub(super) fn group(s: &str) -> Result<String, String> {
    let g = s.trim();
    if g.is_empty() {
        return Err("a group must not be empty".to_string());
    }
    Ok(g.to_string())
}

/// A name the config refers to by itself (a named policy, a backend pool): letters,
/// digits, `-` and `_`.
pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One `egress.allow` entry: `10.0.0.5`, `10.0.0.0/8`, `10.0.0.5:443`, `[fd00::1]:443`,
/// `fd00::/8`, or `host.name:443` (a name needs a port).
pub(super) fn egress_rule(s: &str) -> Result<(crate::EgressTarget, Option<u16>), String> {
    use crate::EgressTarget;
    let s = s.trim();
    let example = "like `10.0.0.5:443`, `10.0.0.0/8`, `[fd00::1]:443` or `llm.internal:443`";
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{s}`: `{p}` is not a port ({example})")),
        }
    };
    if let Ok(addr) = s.parse::<IpAddr>() {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok((EgressTarget::Net { addr, prefix }, None));
    }
    if let Some((net, bits)) = s.split_once('/') {
        let addr: IpAddr = net
            .parse()
            .map_err(|_| format!("`{s}`: `{net}` is not an address ({example})"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = bits
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("`{s}`: `/{bits}` is not a prefix length (0-{max})"))?;
        return Ok((EgressTarget::Net { addr, prefix }, None));
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        let prefix = if sock.is_ipv4() { 32 } else { 128 };
        return Ok((
            EgressTarget::Net {
                addr: sock.ip(),
                prefix,
            },
            Some(port(&sock.port().to_string())?),
        ));
    }
    match s.rsplit_once(':') {
        Some((host, p))
            if !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            Ok((
                EgressTarget::Host(host.to_ascii_lowercase()),
                Some(port(p)?),
            ))
        }
        _ => Err(format!(
            "`{s}` is not an address, network or host:port ({example})"
        )),
    }
}
