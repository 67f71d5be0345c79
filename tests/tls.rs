// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! TLS (nbds://) against real servers: nbdkit --tls=require with X.509
//! (with and without --tls-verify-peer and client certificates) and with
//! --tls-psk, qemu-nbd with tls-creds-x509 and tls-creds-psk (TLS 1.3 and
//! 1.2), over unix sockets and TCP, as source and destination, multi-conn;
//! and every failure: a clear error in bounded time, destination untouched.
//! Certificates are made here with openssl; copies are checked with cmp
//! on the servers' files.

use crate::common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: usize = 12 << 20;

fn need_tools() -> bool {
    require("nbdkit") && require("openssl") && require("qemu-nbd")
}

fn sh(cmd: &str, dir: &Path) {
    output_ok(Command::new("sh").arg("-c").arg(cmd).current_dir(dir), cmd);
}

/// A CA, a server certificate for localhost/127.0.0.1, a client
/// certificate, an expired server certificate, and a second CA; laid out
/// as nbdkit/qemu (server/, expired/) and libnbd (client/, other-ca/) want.
struct Pki {
    root: PathBuf,
}

impl Pki {
    fn new(dir: &TempDir) -> Pki {
        let root = dir.file("pki");
        std::fs::create_dir_all(&root).unwrap();
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(
            &format!(
                "openssl req -x509 {key} -keyout ca-key.pem -out ca-cert.pem -days 30 \
                 -subj '/CN=nbdcpy test CA' && \
                 openssl req -x509 {key} -keyout ca2-key.pem -out ca2-cert.pem -days 30 \
                 -subj '/CN=another CA'"
            ),
            &root,
        );
        let mk = |name: &str, cn: &str, san: &str| {
            sh(
                &format!(
                    "openssl req {key} -keyout {name}-key.pem -out {name}.csr -subj '/CN={cn}' && \
                     printf 'subjectAltName={san}\\nbasicConstraints=CA:FALSE\\n' > {name}.ext && \
                     openssl x509 -req -in {name}.csr -CA ca-cert.pem -CAkey ca-key.pem \
                     -CAcreateserial -out {name}-cert.pem -days 30 -extfile {name}.ext"
                ),
                &root,
            )
        };
        mk("server", "localhost", "DNS:localhost,IP:127.0.0.1");
        mk("client", "alice", "DNS:alice");
        // Expired: signed by the same CA with dates in the past (openssl ca).
        sh(
            "mkdir -p ca.db && : > ca.db/index && echo 01 > ca.db/serial && \
             printf '[ca]\\ndefault_ca=c\\n[c]\\ndir=ca.db\\ndatabase=ca.db/index\\n\
serial=ca.db/serial\\nnew_certs_dir=ca.db\\ndefault_md=sha256\\npolicy=p\\n\
copy_extensions=copy\\n[p]\\ncommonName=supplied\\n' > ca.cnf && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
               -keyout expired-key.pem -out expired.csr -subj '/CN=localhost' \
               -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' && \
             openssl ca -batch -config ca.cnf -cert ca-cert.pem -keyfile ca-key.pem \
               -startdate 20200101000000Z -enddate 20200201000000Z \
               -in expired.csr -out expired-cert.pem",
            &root,
        );
        let lay = |d: &str, files: &[(&str, &str)]| {
            std::fs::create_dir_all(root.join(d)).unwrap();
            for (from, to) in files {
                std::fs::copy(root.join(from), root.join(d).join(to)).unwrap();
            }
        };
        lay(
            "server",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("server-cert.pem", "server-cert.pem"),
                ("server-key.pem", "server-key.pem"),
            ],
        );
        lay(
            "expired",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("expired-cert.pem", "server-cert.pem"),
                ("expired-key.pem", "server-key.pem"),
            ],
        );
        lay(
            "client",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("client-cert.pem", "client-cert.pem"),
                ("client-key.pem", "client-key.pem"),
            ],
        );
        lay("ca-only", &[("ca-cert.pem", "ca-cert.pem")]);
        lay("other-ca", &[("ca2-cert.pem", "ca-cert.pem")]);
        Pki { root }
    }
    fn dir(&self, d: &str) -> String {
        self.root.join(d).to_string_lossy().into_owned()
    }
}

/// A PSK file with `user`'s random key; returns its path.
fn psk_file(dir: &TempDir, name: &str, user: &str) -> String {
    let p = dir.file(name);
    let key: String = pattern(32, name.len() as u64 * 7 + 3)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&p, format!("{user}:{key}\n")).unwrap();
    p.to_string_lossy().into_owned()
}

/// A disk image with data and holes.
fn image(dir: &TempDir, name: &str, seed: u64) -> PathBuf {
    let p = dir.file(name);
    let mut d = pattern(SIZE, seed);
    d[(2 << 20)..(5 << 20)].fill(0);
    d[(9 << 20)..(10 << 20)].fill(0);
    write_file(&p, &d);
    p
}

/// image() "src.img" (`seed`) and "dst.img" full of the byte `fill`.
fn src_and_dst(dir: &TempDir, seed: u64, fill: u8) -> (PathBuf, PathBuf) {
    let dst = dir.file("dst.img");
    write_file(&dst, &vec![fill; SIZE]);
    (image(dir, "src.img", seed), dst)
}

fn tls_uri(s: &Server, user: Option<&str>, params: &str) -> String {
    format!(
        "nbds+unix://{}/?socket={}&{params}",
        user.map_or(String::new(), |u| format!("{u}@")),
        s.socket().display()
    )
}

/// nbdkit's arguments for serving `file` with TLS required:
/// --tls=require TLS... file FILE.
fn tls_args<'a>(tls: &[&'a str], file: &'a Path) -> Vec<&'a str> {
    let mut a = vec!["--tls=require"];
    a.extend(tls);
    a.extend(["file", file.to_str().unwrap()]);
    a
}

/// Copies `uri` into a new file `name` in `dir`, which must then equal
/// `want`.
fn copy_out_equals(dir: &TempDir, uri: &str, name: &str, want: &Path) {
    let out = dir.file(name);
    copy(uri, out.to_str().unwrap(), &[]).unwrap();
    assert!(cmp(want, &out), "{uri} into {name}");
}

fn assert_err(r: nbdcpy::Result<Stats>, words: &[&str], started: Instant) {
    let e = r.expect_err("the copy must fail");
    eprintln!("expected error: {}", e.msg);
    for w in words {
        assert!(e.msg.contains(w), "error lacks \"{w}\": {}", e.msg);
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn psk_nbdkit_both_sides_unix_and_multi_conn() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-psk");
    let psk = psk_file(&dir, "keys.psk", "alice");
    let (src, dst) = src_and_dst(&dir, 1, 0x55);
    let key = format!("--tls-psk={psk}");
    let s = nbdkit(&dir, &tls_args(&[&key], &src));
    let d = nbdkit(&dir, &tls_args(&[&key], &dst));
    let p = format!("tls-psk-file={psk}");
    for conns in ["1", "4"] {
        write_file(&dst, &vec![0x55u8; SIZE]);
        let st = copy(
            &tls_uri(&s, Some("alice"), &p),
            &tls_uri(&d, None, &format!("{p}&tls-username=alice")),
            &[("connections", conns)],
        )
        .unwrap();
        assert!(cmp(&src, &dst), "copy differs with {conns} connection(s)");
        assert_eq!(st.done, SIZE as u64);
        if conns == "4" {
            assert!(st.connections > 2, "multi-conn: {st:?}");
        }
        assert_eq!(st.spliced, 0, "no splice with TLS");
    }
    // To and from a local file.
    copy_out_equals(&dir, &tls_uri(&s, Some("alice"), &p), "out.img", &src);
    let out = dir.file("out.img");
    write_file(&dst, &vec![0x55u8; SIZE]);
    copy(out.to_str().unwrap(), &tls_uri(&d, Some("alice"), &p), &[]).unwrap();
    assert!(cmp(&src, &dst));
    // The user from config keys (the C API's way for what a URI lacks).
    write_file(&dst, &vec![0x55u8; SIZE]);
    let base = |s: &Server| format!("nbds+unix:///?socket={}", s.socket().display());
    copy(
        &base(&s),
        &base(&d),
        &[("tls-psk-file", &psk), ("tls-username", "alice")],
    )
    .unwrap();
    assert!(cmp(&src, &dst));
}

#[test]
fn psk_nbdkit_tcp_and_cli() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-psk-tcp");
    let psk = psk_file(&dir, "keys.psk", "bob");
    let (src, dst) = src_and_dst(&dir, 2, 0);
    let key = format!("--tls-psk={psk}");
    let (_s, su) = nbdkit_tcp(&dir, &tls_args(&[&key], &src));
    let (_d, du) = nbdkit_tcp(&dir, &tls_args(&[&key], &dst));
    let t = |u: &str| {
        format!(
            "{}?tls-psk-file={psk}",
            u.replacen("nbd://", "nbds://bob@", 1)
        )
    };
    copy(&t(&su), &t(&du), &[("connections", "2")]).unwrap();
    assert!(cmp(&src, &dst));
    // The command, and an independent reader (libnbd's nbdcopy).
    if nbdcpy_bin().is_some() {
        write_file(&dst, &vec![0u8; SIZE]);
        let o = common::nbdcpy_cmd()
            .args([t(&su), t(&du)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(cmp(&src, &dst));
    }
    if have("nbdcopy") {
        let back = dir.file("back.img");
        let o = Command::new("nbdcopy")
            .arg(t(&du))
            .arg(&back)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(cmp(&src, &back));
    }
}

#[test]
fn x509_nbdkit_verify_peer_names_and_client_certs() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-x509");
    let pki = Pki::new(&dir);
    let (src, dst) = src_and_dst(&dir, 3, 1);
    let certs = format!("--tls-certificates={}", pki.dir("server"));
    // Source: server does not verify clients; over TCP the URI host is
    // checked against the certificate.
    let (_s, su) = nbdkit_tcp(&dir, &tls_args(&[&certs], &src));
    let port = su
        .trim_start_matches("nbd://127.0.0.1:")
        .trim_end_matches('/');
    // Destination: server verifies the client's certificate.
    let d = nbdkit(&dir, &tls_args(&[&certs, "--tls-verify-peer"], &dst));
    let su_name = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.dir("ca-only")
    );
    let su_ip = format!(
        "nbds://127.0.0.1:{port}/?tls-certificates={}",
        pki.dir("ca-only")
    );
    let du = tls_uri(&d, None, &format!("tls-certificates={}", pki.dir("client")));
    copy(&su_name, &du, &[("connections", "2")]).unwrap();
    assert!(cmp(&src, &dst));
    write_file(&dst, &vec![1u8; SIZE]);
    copy(&su_ip, &du, &[]).unwrap();
    assert!(cmp(&src, &dst));
    // Unix socket with an explicit expected name.
    let s2 = nbdkit(&dir, &tls_args(&[&certs], &src));
    let params = format!(
        "tls-certificates={}&tls-hostname=localhost",
        pki.dir("ca-only")
    );
    copy_out_equals(&dir, &tls_uri(&s2, None, &params), "out.img", &src);
    // tls-verify-peer=false: an untrusting client still connects.
    let params = format!(
        "tls-certificates={}&tls-verify-peer=false",
        pki.dir("other-ca")
    );
    copy_out_equals(&dir, &tls_uri(&s2, None, &params), "out2.img", &src);
}

#[test]
fn qemu_nbd_x509_and_psk_tls13_and_tls12() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-qemu");
    let pki = Pki::new(&dir);
    let psk = psk_file(&dir, "keys.psk", "carol");
    let pskdir = dir.file("qpsk");
    std::fs::create_dir_all(&pskdir).unwrap();
    std::fs::copy(&psk, pskdir.join("keys.psk")).unwrap();
    let src = image(&dir, "src.img", 4);
    for (i, prio) in ["", ",priority=NORMAL:-VERS-TLS1.3:+ECDHE-PSK:+DHE-PSK:+PSK"]
        .iter()
        .enumerate()
    {
        for kind in ["x509", "psk"] {
            let creds = match kind {
                "x509" => format!(
                    "tls-creds-x509,id=tls0,endpoint=server,dir={}{prio}",
                    pki.dir("server")
                ),
                _ => format!(
                    "tls-creds-psk,id=tls0,endpoint=server,dir={}{prio}",
                    pskdir.display()
                ),
            };
            let params = match kind {
                // qemu's x509 creds verify the client by default.
                "x509" => format!("tls-certificates={}", pki.dir("client")),
                _ => format!("tls-psk-file={psk}"),
            };
            let user = (kind == "psk").then_some("carol");
            let dst = dir.file(&format!("dst-{kind}-{i}.img"));
            write_file(&dst, &vec![7u8; SIZE]);
            let tls = ["--object", &creds, "--tls-creds", "tls0"];
            let s = qemu_nbd(&dir, &src, &tls);
            let d = qemu_nbd(&dir, &dst, &tls);
            let st = copy(
                &tls_uri(&s, user, &params),
                &tls_uri(&d, user, &params),
                &[("connections", "2")],
            )
            .unwrap_or_else(|e| panic!("{kind} {prio}: {}", e.msg));
            // Extended headers, negotiated inside TLS.
            let ep = nbdcpy::testing::Endpoint::open(
                &nbdcpy::testing::Spec::parse(&tls_uri(&s, user, &params)),
                nbdcpy::testing::Side::Source,
                &common::config(),
                &nbdcpy::testing::Limits::none(),
            )
            .unwrap();
            match &ep {
                nbdcpy::testing::Endpoint::Nbd(n) => {
                    assert_eq!(n.info.mode, nbdcpy::testing::HeaderMode::Extended);
                    assert!(n.tls_summary().is_some_and(|t| t.contains("TLSv1.")));
                }
                _ => panic!("not an NBD endpoint"),
            }
            drop(ep);
            // The version asked for was the one negotiated (the log says).
            if nbdcpy_bin().is_some() {
                let o = common::nbdcpy_cmd()
                    .args(["-v", &tls_uri(&s, user, &params), "null:"])
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&o.stderr);
                let want = if prio.is_empty() {
                    "TLSv1.3"
                } else {
                    "TLSv1.2"
                };
                assert!(
                    o.status.success() && err.contains(want),
                    "{kind} {prio}: {err}"
                );
            }
            drop(d);
            assert!(cmp(&src, &dst), "{kind} {prio}");
            assert_eq!(st.done, SIZE as u64);
        }
    }
}

#[test]
fn failures_are_clear_bounded_and_write_nothing() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-fail");
    let pki = Pki::new(&dir);
    let psk = psk_file(&dir, "keys.psk", "alice");
    let wrong = psk_file(&dir, "wrong.psk", "alice");
    let other_user = psk_file(&dir, "eve.psk", "eve");
    let src = image(&dir, "src.img", 5);
    let dst = dir.file("dst.img");
    let before = vec![0x77u8; SIZE];
    write_file(&dst, &before);
    let untouched = || assert_eq!(std::fs::read(&dst).unwrap(), before, "destination written");
    let certs = format!("--tls-certificates={}", pki.dir("server"));
    let key = format!("--tls-psk={psk}");
    let expired = format!("--tls-certificates={}", pki.dir("expired"));
    let s_psk = nbdkit(&dir, &tls_args(&[&key], &src));
    let d_psk = nbdkit(&dir, &tls_args(&[&key], &dst));
    let s_x509 = nbdkit(&dir, &tls_args(&[&certs], &src));
    let d_verify = nbdkit(&dir, &tls_args(&[&certs, "--tls-verify-peer"], &dst));
    let s_expired = nbdkit(&dir, &tls_args(&[&expired], &src));
    let s_plain = nbdkit(&dir, &["--tls=off", "file", src.to_str().unwrap()]);
    let d_plain_uri = dst.to_str().unwrap().to_string();
    let ca = format!("tls-certificates={}", pki.dir("ca-only"));

    // (source, destination, words the error must contain)
    let cases: Vec<(String, String, Vec<&str>)> = vec![
        // wrong key, to the source and to the destination
        (
            tls_uri(&s_psk, Some("alice"), &format!("tls-psk-file={wrong}")),
            d_plain_uri.clone(),
            vec!["source", "TLS", "\"alice\""],
        ),
        (
            src.to_str().unwrap().into(),
            tls_uri(&d_psk, Some("alice"), &format!("tls-psk-file={wrong}")),
            vec!["destination", "TLS", "\"alice\""],
        ),
        // unknown identity
        (
            tls_uri(&s_psk, Some("eve"), &format!("tls-psk-file={other_user}")),
            d_plain_uri.clone(),
            vec!["source", "TLS", "\"eve\""],
        ),
        // the user has no key in the file
        (
            tls_uri(&s_psk, Some("mallory"), &format!("tls-psk-file={psk}")),
            d_plain_uri.clone(),
            vec!["no key for user \"mallory\""],
        ),
        // untrusted certificate
        (
            tls_uri(
                &s_x509,
                None,
                &format!("tls-certificates={}", pki.dir("other-ca")),
            ),
            d_plain_uri.clone(),
            vec!["source", "not trusted"],
        ),
        // expired certificate
        (
            tls_uri(&s_expired, None, &ca),
            d_plain_uri.clone(),
            vec!["source", "expired"],
        ),
        // name mismatch
        (
            tls_uri(&s_x509, None, &format!("{ca}&tls-hostname=wrong.example")),
            d_plain_uri.clone(),
            vec!["source", "not for \"wrong.example\""],
        ),
        // server without TLS: never a plaintext fallback
        (
            tls_uri(&s_plain, None, &ca),
            d_plain_uri.clone(),
            vec!["source", "does not offer it"],
        ),
        // plain client, server requires TLS
        (
            s_psk.uri(),
            d_plain_uri.clone(),
            vec!["source", "requires TLS", "nbds://"],
        ),
        // the server wants a client certificate (a TLS alert / close)
        (
            src.to_str().unwrap().into(),
            tls_uri(&d_verify, None, &ca),
            vec!["destination", "client certificate"],
        ),
    ];
    for (s, d, words) in cases {
        let t = Instant::now();
        assert_err(copy(&s, &d, &[]), &words, t);
        untouched();
    }
}

#[test]
fn server_killed_mid_copy_is_an_error() {
    if !need_tools() {
        return;
    }
    let dir = TempDir::new("tls-cut");
    let psk = psk_file(&dir, "keys.psk", "alice");
    let src = image(&dir, "src.img", 6);
    let mut s = nbdkit(
        &dir,
        &[
            "--tls=require",
            &format!("--tls-psk={psk}"),
            "--filter=delay",
            "file",
            src.to_str().unwrap(),
            "rdelay=200ms",
        ],
    );
    let uri = tls_uri(&s, Some("alice"), &format!("tls-psk-file={psk}"));
    let out = dir.file("out.img");
    let o = out.to_str().unwrap().to_string();
    let t = Instant::now();
    let h = std::thread::spawn(move || copy(&uri, &o, &[("request-size", "64k")]));
    std::thread::sleep(Duration::from_millis(600));
    s.kill_now();
    let r = h.join().unwrap();
    let e = r.expect_err("a copy whose server died must fail");
    eprintln!("expected error: {}", e.msg);
    assert!(
        e.msg.contains("close_notify") || e.msg.contains("closed the connection"),
        "{}",
        e.msg
    );
    assert!(e.msg.contains("source"), "{}", e.msg);
    assert!(t.elapsed() < Duration::from_secs(30));
}
