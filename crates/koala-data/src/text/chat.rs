//! Rendering conversations with the model's Jinja chat template (`minijinja`) and locating the assistant
//! turns in the rendered text.
//!
//! **The environment** matches what `transformers` gives templates (`utils/chat_template_utils.py`): blocks
//! trimmed (`trim_blocks`, `lstrip_blocks`), the variables `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, and the functions `raise_exception(message)` and `strftime_now(format)` (UTC here, so a
//! data set renders the same on every machine's clock zone). `tojson`, loop controls and Python's string
//! and dict methods (`minijinja-contrib`'s `pycompat`) are available.
//!
//! **Assistant spans by rendering prefixes.** For assistant message *i*, the template renders messages
//! `..i` with `add_generation_prompt = true` (text P: everything up to where the model starts answering) and
//! messages `..=i` without it (text Q). The answer is `Q[len P ..]`, trimmed after the last end token in it
//! (`<|im_end|>` is trained, the newline a template writes after it is not: generation stops at the end
//! token). This works for any template that renders conversations incrementally, without the
//! `{% generation %}` markers few templates carry; a template that does not (P not a prefix of Q, or Q not a
//! prefix of the whole) is refused with a message rather than guessed at. The character spans are then
//! mapped to tokens of *one* encoding of the whole conversation (by the tokens' byte offsets), because
//! tokenizing pieces separately can merge differently at the seams than the text the model will see.

use std::ops::Range;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; the error is minijinja's (line and column in the template).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, JinjaError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string/dict methods (`.strip()`, `.startswith()`, `.items()`…) that HF templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_global("bos_token", bos_token.to_string());
        env.add_global("eos_token", eos_token.to_string());
        env.add_template_owned("chat", source.to_string())?;
        Ok(ChatTemplate {
            env,
            eos_token: eos_token.to_string(),
        })
    }

    /// The text of `messages`, followed by the assistant header if `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, JinjaError> {
        self.env.get_template("chat")?.render(
            context! { messages => messages, add_generation_prompt => add_generation_prompt },
        )
    }

    /// The rendered conversation and the byte range of each assistant answer in it (see the module docs).
    /// `Err` carries a message for the user.
    pub fn render_with_assistant_spans(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Vec<Range<usize>>), String> {
        let describe = |e: JinjaError| format!("the chat template failed: {e:#}");
        let full = self.render(messages, false).map_err(describe)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true).map_err(describe)?;
            let turn = self.render(&messages[..=i], false).map_err(describe)?;
            if !turn.starts_with(&prompt) || !full.starts_with(&turn) {
                return Err(format!(
                    "the chat template does not render this conversation incrementally (the text up to \
                     assistant message {i} changes when later messages are added), so its answers cannot be \
                     located; convert the data to prompt/completion lines instead"
                ));
            }
            let answer = &turn[prompt.len()..];
            let end = match answer.rfind(&self.eos_token) {
                Some(at) if !self.eos_token.is_empty() => at + self.eos_token.len(),
                _ => answer.trim_end().len(),
            };
            spans.push(prompt.len()..prompt.len() + end);
        }
        Ok((full, spans))
    }
}

/// `raise_exception(message)`: how HF templates reject a conversation (e.g. roles not alternating).
fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// `strftime_now(format)`: the current UTC time, formatted with the C `strftime` codes templates use
/// (`%Y %y %m %d %e %j %H %M %S %b %B %a %A %%`).
fn strftime_now(format: String) -> Result<String, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Formats `secs` since the Unix epoch (UTC) with `strftime` codes.
pub(crate) fn format_utc(secs: u64, format: &str) -> Result<String, JinjaError> {
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let weekday = WEEKDAYS[((days + 4) % 7) as usize]; // 1970-01-01 was a Thursday
    let month_name = MONTHS[month as usize - 1];
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:2}"),
            Some('j') => out += &format!("{day_of_year:03}"),
            Some('H') => out += &format!("{h:02}"),
            Some('M') => out += &format!("{m:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some('b') => out += &month_name[..3],
            Some('B') => out += month_name,
            Some('a') => out += &weekday[..3],
            Some('A') => out += weekday,
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported code %{}",
                        other.map_or(String::new(), String::from)
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// (year, month 1–12, day 1–31) of day `z` since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
/// Algorithms", `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (the same paper's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_codes_match_known_dates() {
        // 2024-02-29 13:05:09 UTC = 1709211909 s (leap day; checked with `date -u -d @1709211909`).
        assert_eq!(
            format_utc(1_709_211_909, "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %e %%").unwrap(),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 29 %"
        );
        assert_eq!(format_utc(0, "%d %b %Y").unwrap(), "01 Jan 1970");
        assert!(format_utc(0, "%Q").is_err());
    }

    #[test]
    fn raise_exception_stops_rendering_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}x",
            "",
            "</s>",
        )
        .unwrap();
        let messages = [ChatMessage {
            role: "assistant".into(),
            content: "hi".into(),
        }];
        let err = t.render_with_assistant_spans(&messages).unwrap_err();
        assert!(err.contains("first message must be user"), "{err}");
    }
}
