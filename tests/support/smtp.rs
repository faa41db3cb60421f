//! A minimal SMTP client, enough to submit mail to the instance's smtpd(8).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Everything said in both directions, for error messages.
    pub transcript: String,
}

/// A reply: code and the text of all its lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl SmtpClient {
    /// Connects to 127.0.0.1:`port`, reads the greeting and says EHLO.
    pub fn connect(port: u16, timeout: Duration) -> Result<SmtpClient, String> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
            .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut c = SmtpClient {
            reader: BufReader::new(stream),
            writer,
            transcript: String::new(),
        };
        c.expect(None, 220)?;
        c.expect(Some("EHLO client.rqmgr-test.example"), 250)?;
        Ok(c)
    }

    fn read_reply(&mut self) -> Result<Reply, String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("reading SMTP reply: {e}\n{}", self.transcript))?;
            if n == 0 {
                return Err(format!("connection closed by server\n{}", self.transcript));
            }
            self.transcript.push_str("S: ");
            self.transcript.push_str(&line);
            let line = line.trim_end();
            if line.len() < 3 {
                return Err(format!("bad SMTP reply line {line:?}\n{}", self.transcript));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| format!("bad SMTP reply line {line:?}\n{}", self.transcript))?;
            text.push_str(line.get(4..).unwrap_or(""));
            if line.as_bytes().get(3) == Some(&b'-') {
                text.push('\n');
                continue;
            }
            return Ok(Reply { code, text });
        }
    }

    fn send_line(&mut self, line: &str) -> Result<(), String> {
        self.transcript.push_str("C: ");
        self.transcript.push_str(line);
        self.transcript.push('\n');
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("sending {line:?}: {e}"))
    }

    /// Sends `command` (if any) and requires reply `code`.
    pub fn expect(&mut self, command: Option<&str>, code: u16) -> Result<Reply, String> {
        if let Some(cmd) = command {
            self.send_line(cmd)?;
        }
        let reply = self.read_reply()?;
        if reply.code != code {
            return Err(format!(
                "expected {code} after {:?}, got {} {}\n{}",
                command.unwrap_or("(greeting)"),
                reply.code,
                reply.text,
                self.transcript
            ));
        }
        Ok(reply)
    }

    /// One mail transaction. `message` is the header and body, lines
    /// separated by `\n`. Returns the queue id from `250 ... queued as ID`.
    pub fn send(&mut self, from: &str, rcpts: &[&str], message: &str) -> Result<String, String> {
        self.expect(Some(&format!("MAIL FROM:<{from}>")), 250)?;
        for r in rcpts {
            self.expect(Some(&format!("RCPT TO:<{r}>")), 250)?;
        }
        self.expect(Some("DATA"), 354)?;
        let mut data = String::new();
        for line in message.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.transcript
            .push_str(&format!("C: ({} bytes of message)\n", data.len()));
        self.writer
            .write_all(data.as_bytes())
            .map_err(|e| format!("sending message data: {e}"))?;
        let reply = self.expect(None, 250)?;
        match reply.text.split("queued as ").nth(1) {
            Some(id) => Ok(id.trim().to_string()),
            None => Err(format!(
                "no queue id in reply {:?}\n{}",
                reply.text, self.transcript
            )),
        }
    }

    pub fn quit(mut self) {
        let _ = self.expect(Some("QUIT"), 221);
    }
}
