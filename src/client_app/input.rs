//! Where the user's lines come from: a prompt on a terminal, or piped stdin.
//!
//! The prompt is edited on a thread of its own (rustyline), so it keeps working
//! whatever the connection does: typing, Ctrl-C and Ctrl-D are answered at once,
//! during an outage too. Lines go to the program through a channel; what the
//! program shows goes above the prompt through rustyline's external printer.

use super::command::{self, Command};
use super::screen::Screen;
use crate::validate::MAX_MESSAGE_CHARS;
use nix::sys::termios::{self, SetArg, Termios};
use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader, Stdin};
use tokio::sync::mpsc;

/// The prompt shown before the line being typed.
const PROMPT: &str = "> ";

/// The most of one piped input line the client keeps. A message is at most 128
/// characters of at most 4 bytes each, plus a line ending; anything longer cannot be
/// sent, so the rest of it is counted and dropped rather than held in memory.
pub const MAX_INPUT_LINE_BYTES: usize = MAX_MESSAGE_CHARS * 4 + 2;

/// What the user typed at the prompt.
pub(super) enum Typed {
    Line(String),
    /// Ctrl-C, or the end of input (Ctrl-D on an empty line).
    Leave,
}

/// One line of input, understood.
pub(super) enum InputLine {
    /// A command or a message.
    Command(Command),
    /// A line longer than [`MAX_INPUT_LINE_BYTES`], of this many bytes.
    TooLong(usize),
    /// The end of input, or Ctrl-C at the prompt.
    End,
}

/// Where the user's lines come from.
pub(super) enum Input {
    /// A terminal, with a prompt.
    Prompt {
        lines: mpsc::UnboundedReceiver<Typed>,
        /// The terminal's settings before the prompt changed them, restored on
        /// [`Input::close`] even if the prompt thread is still reading.
        saved: Option<Termios>,
    },
    /// Piped stdin: each line is one message.
    Piped {
        reader: BufReader<Stdin>,
        /// The line read so far, at most [`MAX_INPUT_LINE_BYTES`] of it.
        buffer: Vec<u8>,
        /// How many bytes of the current line did not fit in `buffer`.
        dropped: usize,
    },
}

impl Input {
    /// Input from piped stdin, and a screen that writes to stdout and stderr.
    pub(super) fn piped() -> (Self, Screen) {
        let input = Input::Piped {
            reader: BufReader::new(tokio::io::stdin()),
            buffer: Vec::new(),
            dropped: 0,
        };
        (input, Screen::Plain)
    }

    /// A prompt on the terminal, edited on its own thread, and the screen that
    /// writes above it.
    pub(super) fn prompt() -> Result<(Self, Screen), ReadlineError> {
        let saved = termios::tcgetattr(std::io::stdin()).ok();
        let config = Config::builder().auto_add_history(true).build();
        let mut editor = DefaultEditor::with_config(config)?;
        let printer = editor.create_external_printer()?;
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("prompt".into())
            .spawn(move || {
                loop {
                    let typed = match editor.readline(PROMPT) {
                        Ok(line) => Typed::Line(line),
                        Err(ReadlineError::Interrupted | ReadlineError::Eof) => Typed::Leave,
                        Err(err) => {
                            tracing::warn!(error = %err, "the prompt failed");
                            Typed::Leave
                        }
                    };
                    let leave = matches!(typed, Typed::Leave);
                    if sender.send(typed).is_err() || leave {
                        break;
                    }
                }
            })
            .map_err(ReadlineError::Io)?;
        let screen = Screen::Prompt(Arc::new(Mutex::new(Some(Box::new(printer)))));
        Ok((Input::Prompt { lines, saved }, screen))
    }

    /// Whether the input is a prompt on a terminal.
    pub(super) fn is_prompt(&self) -> bool {
        matches!(self, Input::Prompt { .. })
    }

    /// The next line, without its line ending. Cancel-safe: a partly read line stays
    /// in the buffer for the next call.
    pub(super) async fn next_line(&mut self) -> InputLine {
        let line = match self {
            Input::Prompt { lines, .. } => match lines.recv().await {
                Some(Typed::Line(line)) => line.into_bytes(),
                Some(Typed::Leave) | None => return InputLine::End,
            },
            Input::Piped {
                reader,
                buffer,
                dropped,
            } => {
                loop {
                    // A read error ends the input like end of file does.
                    let chunk = reader.fill_buf().await.unwrap_or(&[]);
                    if chunk.is_empty() {
                        if buffer.is_empty() && *dropped == 0 {
                            return InputLine::End;
                        }
                        // End of input after a last line without a newline.
                        break;
                    }
                    let (part, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
                        Some(end) => (&chunk[..=end], true),
                        None => (chunk, false),
                    };
                    let keep = part.len().min(MAX_INPUT_LINE_BYTES - buffer.len());
                    buffer.extend_from_slice(&part[..keep]);
                    *dropped += part.len() - keep;
                    let used = part.len();
                    reader.consume(used);
                    if ends_line {
                        break;
                    }
                }
                if *dropped > 0 {
                    let bytes = buffer.len() + std::mem::take(dropped);
                    buffer.clear();
                    return InputLine::TooLong(bytes);
                }
                trim_line_ending(std::mem::take(buffer))
            }
        };
        InputLine::Command(command::parse(line))
    }

    /// Gives the terminal back as it was: the prompt thread may still be waiting
    /// for a key in raw mode when the program ends.
    pub(super) fn close(self) {
        if let Input::Prompt {
            saved: Some(saved), ..
        } = self
        {
            let mut stdout = std::io::stdout();
            // Leave the prompt's row empty and bracketed paste off, as a shell expects.
            let _ = stdout.write_all(b"\r\x1b[J\x1b[?2004l");
            let _ = stdout.flush();
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &saved);
        }
    }
}

fn trim_line_ending(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}
