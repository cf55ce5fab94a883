//! `status --device`: a device's own view of its tuners, beside the slots
//! this node holds on it, and the foreign readers that comparison finds.
//!
//! The device is asked once (`status.json`, bounded, not retried); what it
//! answers is untrusted text, kept out of the terminal's control (escaped)
//! and never fatal: a device that cannot be asked is a warning in its entry
//! and makes the exit status 69 unless a foreign reader is seen (ECP-0132).

use std::fmt::Write as _;

use serde::Serialize;

use crate::device_http::{Device, TunerProblem, TunerStatus};
use crate::foreign_reader::{ForeignReader, Reason, foreign_readers};
use crate::printable::printable;

/// What the device said and what it means; flattened into a `devices[]`
/// entry of `status --json` (only with `--device`).
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// This node's address towards the device, as the kernel picks it.
    pub our_address: Option<String>,
    /// The device's tuners as `status.json` reports them; `null` when it
    /// could not be asked.
    pub device_tuners: Option<Vec<TunerJson>>,
    /// Busy tuners no slot on this node accounts for.
    pub foreign_readers: Vec<ForeignReader>,
    /// Why the device's view is missing or partial.
    #[serde(skip)]
    pub problems: Vec<String>,
}

/// One tuner as the device reports it.
#[derive(Debug, Serialize)]
pub struct TunerJson {
    /// Its `Resource`, or `#<i>` (its position) when the device gives none.
    pub tuner: String,
    pub busy: bool,
    pub channel: Option<String>,
    pub target: Option<String>,
    /// `no_resource` or `unreadable` when the device's entry is not a
    /// whole tuner; `null` when it is.
    pub problem: Option<TunerProblem>,
}

impl From<&TunerStatus> for TunerJson {
    fn from(tuner: &TunerStatus) -> Self {
        Self {
            tuner: tuner.resource.clone(),
            busy: tuner.busy,
            channel: tuner.channel.clone(),
            target: tuner.target.clone(),
            problem: tuner.problem,
        }
    }
}

impl DeviceReport {
    /// Asks `device` for its tuners and compares them with the `slots_held`
    /// slots this node holds on it.
    #[must_use]
    pub fn ask(device: &Device, slots_held: usize) -> Self {
        let mut view = Self {
            our_address: None,
            device_tuners: None,
            foreign_readers: Vec::new(),
            problems: Vec::new(),
        };
        let ours = match device.own_address() {
            Ok(ours) => ours,
            Err(e) => {
                view.problems.push(format!(
                    "cannot find this node's address towards device {device}: {e}; check the device's address and this node's routes"
                ));
                return view;
            }
        };
        view.our_address = Some(ours.to_string());
        match device.tuner_status() {
            Ok(tuners) => {
                view.foreign_readers = foreign_readers(&tuners, ours, slots_held);
                view.problems.extend(tuners.iter().filter_map(|tuner| {
                    let name = printable(&tuner.resource);
                    tuner.problem.map(|problem| match problem {
                        TunerProblem::NoResource => format!(
                            "device {device}'s status.json gives no Resource for its tuner {name}: shown by its position, judged on what it says"
                        ),
                        TunerProblem::Unreadable => format!(
                            "device {device}'s status.json entry {name} is not a tuner: whether a reader uses a tuner there is unknown; check the device's firmware (GET {})",
                            device.url("status.json")
                        ),
                    })
                }));
                view.device_tuners = Some(tuners.iter().map(TunerJson::from).collect());
            }
            Err(e) => view.problems.push(format!(
                "cannot ask device {device} for its tuners (GET {}): {}; its foreign readers are unknown: check that it is on and answers on port 80 from this node",
                device.url("status.json"),
                e.with_causes()
            )),
        }
        view
    }

    /// True when the device could not be asked, or one of its entries says
    /// nothing: "no foreign reader" is then not established.
    #[must_use]
    pub fn unanswered(&self) -> bool {
        self.device_tuners.as_ref().is_none_or(|tuners| {
            tuners
                .iter()
                .any(|t| t.problem == Some(TunerProblem::Unreadable))
        })
    }

    /// The warnings of this device's entry: one per foreign reader, saying
    /// what to do, then why the view is missing.
    #[must_use]
    pub fn warnings(&self, device: &Device) -> Vec<String> {
        let ours = self.our_address.as_deref().unwrap_or("?");
        let mut warnings: Vec<String> = self
            .foreign_readers
            .iter()
            .map(|reader| {
                let mut line = format!("foreign reader: device {device} reports {}", printable(&reader.tuner));
                if let Some(channel) = &reader.channel {
                    let _ = write!(line, " on channel {}", printable(channel));
                }
                match reader.reason {
                    Reason::OtherTarget => {
                        let target = reader.target.as_deref().map_or_else(|| "an unnamed target".into(), printable);
                        let _ = write!(line, " streaming to {target}, not this node ({ours}): another node, a TV app or a stale helper holds a tuner no slot here accounts for; find and stop it there, or lower this node's --tuners");
                    }
                    Reason::NoSlotHere => {
                        let _ = write!(line, " streaming to this node ({ours}), beyond the slots held here: a reader on this node took no slot (a hand-started ec-node, a curl); find it with `ss -tnp dst {device}` and stop it, or start it through ec-launch --tuners");
                    }
                }
                line
            })
            .collect();
        warnings.extend(self.problems.iter().cloned());
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;

    /// A loopback device that answers `status.json` with `body` once.
    fn device_answering(body: &'static str) -> (Device, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).expect("read") > 2 {
                line.clear();
            }
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        (Device::with_port("127.0.0.1", port), server)
    }

    #[test]
    fn a_tuner_streaming_elsewhere_is_a_foreign_reader_with_advice() {
        let (device, server) = device_answering(
            r#"[{"Resource":"tuner0","VctNumber":"5.1","TargetIP":"127.0.0.1"},
                {"Resource":"tuner1","VctNumber":"7.1","TargetIP":"127.0.0.9"}]"#,
        );
        let view = DeviceReport::ask(&device, 1);
        server.join().expect("server");
        assert_eq!(view.our_address.as_deref(), Some("127.0.0.1"));
        assert_eq!(view.foreign_readers.len(), 1, "{view:?}");
        let warnings = view.warnings(&device);
        assert!(
            warnings[0].contains(
                "tuner1 on channel 7.1 streaming to 127.0.0.9, not this node (127.0.0.1)"
            ),
            "{warnings:?}"
        );
        let json = serde_json::to_value(&view).expect("json");
        assert_eq!(json["foreign_readers"][0]["tuner"], "tuner1");
        assert_eq!(json["foreign_readers"][0]["reason"], "other_target");
        assert_eq!(json["device_tuners"][1]["target"], "127.0.0.9");
    }

    #[test]
    fn a_device_that_cannot_be_asked_is_a_warning_not_a_crash() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let device = Device::with_port("127.0.0.1", port);
        let view = DeviceReport::ask(&device, 0);
        assert!(view.unanswered());
        assert!(view.foreign_readers.is_empty());
        let warnings = view.warnings(&device);
        assert!(
            warnings[0].starts_with("cannot ask device 127.0.0.1 for its tuners"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_device_answering_garbage_is_a_warning_and_its_readers_unknown() {
        let (device, server) = device_answering("{\"Resource\": <html>");
        let view = DeviceReport::ask(&device, 0);
        server.join().expect("server");
        assert!(view.unanswered());
        let warnings = view.warnings(&device);
        assert!(
            warnings[0].contains("malformed answer: not JSON"),
            "{warnings:?}"
        );
    }

    #[test]
    fn control_characters_from_the_device_are_escaped_in_warnings() {
        let (device, server) = device_answering(
            r#"[{"Resource":"tuner0\u001b[2J","VctNumber":"5.1\r","TargetIP":"evil\u0007"}]"#,
        );
        let view = DeviceReport::ask(&device, 0);
        server.join().expect("server");
        let warnings = view.warnings(&device).join("\n");
        assert!(
            !warnings.chars().any(|c| c.is_control() && c != '\n'),
            "{warnings:?}"
        );
        assert!(warnings.contains("tuner0\\x1b[2J"), "{warnings}");
    }
}
