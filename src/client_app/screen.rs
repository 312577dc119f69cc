//! Where lines for the person go: straight to stdout when output is piped, or above
//! the line being typed at a prompt.

use crate::display::{colour_wanted, sanitize};
use rustyline::ExternalPrinter;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The lines for the person: chat on stdout; notices and errors on stderr when
/// output is piped (so stdout holds only the chat), above the prompt otherwise.
#[derive(Clone)]
pub(super) enum Screen {
    /// Output is piped.
    Plain,
    /// A prompt is being edited: lines go above it, and it is redrawn below; once
    /// [`Screen::finish`] took the printer away, lines go straight to stdout.
    Prompt(Arc<Mutex<Option<Box<dyn ExternalPrinter + Send>>>>),
}

impl Screen {
    /// One line of chat (already sanitized).
    pub(super) fn line(&self, line: &str) {
        match self {
            Screen::Plain => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(format!("{line}\n").as_bytes());
                let _ = stdout.flush();
            }
            Screen::Prompt(printer) => {
                let mut printer = printer.lock().unwrap_or_else(|poison| poison.into_inner());
                // A failed print means the prompt has gone; the line goes as output would.
                let printed = printer
                    .as_mut()
                    .is_some_and(|printer| printer.print(format!("{line}\n")).is_ok());
                if !printed {
                    println!("{line}");
                }
            }
        }
    }

    /// A word about the connection or the session.
    pub(super) fn notice(&self, message: &str) {
        match self {
            Screen::Plain => eprintln!("chittychat-client: {}", sanitize(message)),
            Screen::Prompt(_) if colour_wanted() => {
                self.line(&format!("\x1b[2m{}\x1b[0m", sanitize(message)));
            }
            Screen::Prompt(_) => self.line(&sanitize(message)),
        }
    }

    /// Something that went wrong, which the user may want to act on.
    pub(super) fn error(&self, message: &str) {
        match self {
            Screen::Plain => eprintln!("chittychat-client: error: {}", sanitize(message)),
            Screen::Prompt(_) if colour_wanted() => {
                self.line(&format!("\x1b[31merror:\x1b[0m {}", sanitize(message)));
            }
            Screen::Prompt(_) => self.line(&format!("error: {}", sanitize(message))),
        }
    }

    /// Stops writing above the prompt: the program is about to end, and a line
    /// handed to the prompt's thread now might not be written before it does.
    pub(super) fn finish(&self) {
        if let Screen::Prompt(printer) = self {
            printer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take();
        }
    }

    /// Whether lines go above a prompt.
    pub(super) fn is_prompt(&self) -> bool {
        matches!(self, Screen::Prompt(_))
    }
}
