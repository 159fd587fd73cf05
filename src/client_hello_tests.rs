use proptest::prelude::*;

use super::*;

/// A ClientHello body with `extensions` (type, data) after the fixed fields.
fn body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[7; 32]);
    b.push(0); // session id
    b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    b.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        ext.extend_from_slice(data);
    }
    b.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&ext);
    b
}

fn sni(name: &str) -> (u16, Vec<u8>) {
    let mut entry = vec![HOST_NAME];
    entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    entry.extend_from_slice(name.as_bytes());
    let mut data = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (SERVER_NAME, data)
}

/// The handshake message for `body`, cut into records of at most `cut`.
fn records(body: &[u8], cut: usize) -> Vec<u8> {
    let mut message = vec![CLIENT_HELLO];
    message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    message.extend_from_slice(body);
    let mut out = Vec::new();
    for piece in message.chunks(cut) {
        out.extend_from_slice(&[HANDSHAKE, 3, 1]);
        out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

fn tls(sni: Option<&str>, ech: bool) -> Parse {
    Parse::Done(Hello::Tls {
        sni: sni.map(str::to_owned),
        ech,
    })
}

#[test]
fn reads_the_server_name() {
    let hello = records(
        &body(&[(10, vec![0, 2, 0, 29]), sni("API.Example.COM.")]),
        16384,
    );
    assert_eq!(parse(&hello), tls(Some("api.example.com"), false));
}

#[test]
fn every_prefix_is_incomplete_and_the_whole_is_done() {
    let hello = records(&body(&[sni("a.example")]), 16384);
    for end in 0..hello.len() {
        assert_eq!(parse(&hello[..end]), Parse::Incomplete, "prefix {end}");
    }
    assert_eq!(parse(&hello), tls(Some("a.example"), false));
}

#[test]
fn reassembles_a_hello_fragmented_across_records() {
    for cut in [1, 2, 3, 5, 17, 64] {
        let hello = records(&body(&[sni("a.example")]), cut);
        assert_eq!(parse(&hello), tls(Some("a.example"), false), "cut {cut}");
    }
}

#[test]
fn no_server_name_and_ech_are_reported() {
    assert_eq!(parse(&records(&body(&[]), 16384)), tls(None, false));
    let ech = records(
        &body(&[sni("public.example"), (0xfe0d, vec![0; 40])]),
        16384,
    );
    assert_eq!(parse(&ech), tls(Some("public.example"), true));
    let esni = records(&body(&[(0xffce, vec![1, 2, 3])]), 16384);
    assert_eq!(parse(&esni), tls(None, true));
}

#[test]
fn not_tls_and_malformed_hellos_are_refused_as_such() {
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        // An application-data record first.
        vec![23, 3, 3, 0, 1, 0],
        // A ServerHello where a ClientHello belongs.
        vec![HANDSHAKE, 3, 3, 0, 4, 2, 0, 0, 0],
        // Two server_name extensions.
        records(&body(&[sni("a.example"), sni("b.example")]), 16384),
        // A name with a NUL in it.
        records(&body(&[sni("a.example\0.b")]), 16384),
        // An extension longer than the extensions block.
        records(
            &{
                let mut b = body(&[]);
                b.truncate(b.len() - 2);
                b.extend_from_slice(&[0, 4, 0, 0, 0, 9]);
                b
            },
            16384,
        ),
        // Bytes after the extensions block.
        records(
            &{
                let mut b = body(&[]);
                b.push(0);
                b
            },
            16384,
        ),
    ];
    for case in cases {
        assert!(
            matches!(parse(&case), Parse::Done(Hello::NotTls { .. })),
            "{case:?}"
        );
    }
}

#[test]
fn a_hello_larger_than_the_bound_is_refused_without_reading_it() {
    let mut head = vec![HANDSHAKE, 3, 1, 0, 4, CLIENT_HELLO];
    head.extend_from_slice(&[0x01, 0x00, 0x00]); // 64 KiB
    assert!(matches!(parse(&head), Parse::Done(Hello::NotTls { .. })));
}

#[tokio::test]
async fn read_takes_a_hello_split_across_writes_and_returns_every_byte() {
    let hello = records(&body(&[sni("a.example")]), 7);
    let (mut client, mut server) = tokio::io::duplex(64);
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for piece in sent.chunks(3) {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let mut bytes = Vec::new();
    let got = read(&mut server, &mut bytes, HELLO_TIMEOUT).await.unwrap();
    assert_eq!(
        got,
        Hello::Tls {
            sni: Some("a.example".into()),
            ech: false
        }
    );
    assert_eq!(bytes, hello);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn read_reports_a_closed_tunnel() {
    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    assert!(matches!(
        read(&mut server, &mut Vec::new(), HELLO_TIMEOUT).await,
        Err(ReadError::Closed)
    ));
}

#[test]
fn judge_refuses_what_it_cannot_check_unless_allowed() {
    let host = Host::Name("api.example".into());
    let strict = Strictness::default();
    let hello = |sni: Option<&str>, ech| Hello::Tls {
        sni: sni.map(str::to_owned),
        ech,
    };
    let reason = |r: Result<String, (Reason, String)>| r.err().map(|e| e.0);
    assert_eq!(
        judge(&hello(Some("api.example"), false), &host, strict),
        Ok("sni api.example".into())
    );
    assert_eq!(
        reason(judge(&hello(Some("evil.example"), false), &host, strict)),
        Some(Reason::TunnelSniMismatch)
    );
    assert_eq!(
        reason(judge(&hello(None, false), &host, strict)),
        Some(Reason::TunnelSniMissing)
    );
    assert_eq!(
        reason(judge(&Hello::NotTls { why: "x" }, &host, strict)),
        Some(Reason::TunnelSniMissing)
    );
    assert_eq!(
        reason(judge(&hello(Some("api.example"), true), &host, strict)),
        Some(Reason::TunnelEch)
    );
    let ip = Host::Ip(std::net::Ipv4Addr::LOCALHOST.into());
    assert_eq!(
        reason(judge(&hello(Some("api.example"), false), &ip, strict)),
        Some(Reason::TunnelSniMismatch)
    );
    let lenient = Strictness {
        tunnel_without_sni: true,
        tunnel_ech: true,
        ..Strictness::default()
    };
    assert!(judge(&hello(None, false), &host, lenient).is_ok());
    assert!(judge(&Hello::NotTls { why: "x" }, &host, lenient).is_ok());
    assert!(judge(&hello(Some("public.example"), true), &host, lenient).is_ok());
    // Allowing what cannot be checked never allows a wrong name.
    assert_eq!(
        reason(judge(&hello(Some("evil.example"), false), &host, lenient)),
        Some(Reason::TunnelSniMismatch)
    );
}

proptest! {
    /// Whatever the bytes, parsing ends without a panic, and never asks
    /// for more once the bound is reached.
    #[test]
    fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    /// However a ClientHello is cut into records, it reads the same.
    #[test]
    fn fragmentation_does_not_change_the_answer(cut in 1usize..300, name in "[a-z]{1,20}\\.example") {
        let hello = records(&body(&[sni(&name)]), cut);
        prop_assert_eq!(parse(&hello), tls(Some(&name), false));
    }

    /// A valid hello followed by any bytes reads the same.
    #[test]
    fn trailing_bytes_do_not_matter(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut hello = records(&body(&[sni("a.example")]), 100);
        hello.extend_from_slice(&tail);
        prop_assert_eq!(parse(&hello), tls(Some("a.example"), false));
    }
}
