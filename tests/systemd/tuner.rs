//! The small HTTP client the stand-in programs use to talk to the tuner
//! emulator (`crates/ec-test-support/src/tuner_emulator.rs`, which this binary also
//! plays under the name `tuner-emulator`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

/// A response's status line and headers, with the connection left at the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: BufReader<TcpStream>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET url` over a fresh connection (plain HTTP only: the emulator's).
pub fn get(url: &str) -> io::Result<Response> {
    let parsed = url::Url::parse(url).map_err(io::Error::other)?;
    let host = parsed
        .host_str()
        .ok_or_else(|| io::Error::other("URL without host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let mut stream = TcpStream::connect((host, port))?;
    let mut target = parsed.path().to_owned();
    if let Some(query) = parsed.query() {
        target.push('?');
        target.push_str(query);
    }
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: ec-systemd-suite\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = BufReader::new(stream);
    let mut status_line = String::new();
    body.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if body.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `http-get URL`: prints the body of a 200 answer (used for `/stats`).
pub fn http_get_main(args: &[String]) -> ExitCode {
    let Some(url) = args.first() else {
        eprintln!("usage: http-get URL");
        return ExitCode::from(2);
    };
    match get(url) {
        Ok(mut response) if response.status == 200 => {
            let mut body = String::new();
            match response.body.read_to_string(&mut body) {
                Ok(_) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("http-get: {url}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Ok(response) => {
            eprintln!("http-get: {url}: HTTP {}", response.status);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("http-get: {url}: {e}");
            ExitCode::from(1)
        }
    }
}
