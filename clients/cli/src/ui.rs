//! How `natter-cli chat` looks: a pure function of [`App`] drawn into a ratatui frame, so
//! it is tested against ratatui's `TestBackend` at any size.
//!
//! ```text
//! ┌chats────────┐┌bo · online───────────────────┐
//! │bo        (2)││     ── Mon 30 Nov 2026 ──     │
//! │ you: hi     ││10:00 bo: hey                  │
//! │Trip         ││10:01 you: hi ✓✓               │
//! └─────────────┘└bo is typing…─────────────────┘
//! ┌message──────────────────────────────────────┐
//! │> _                                          │
//! └─────────────────────────────────────────────┘
//!  ann  Enter send · Tab switch · PgUp older · /new @user · /group N @a · /quit
//! ```

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, List, ListItem, ListState, Paragraph},
};

use crate::app::{App, ChatLine, Conversation, Tick, clock};

/// Below this width the conversation list is hidden (Tab still switches).
const LIST_MIN_WIDTH: u16 = 36;
const HELP: &str = "Enter send · Tab switch · PgUp older · /new @user · /group N @a · /quit";

pub fn draw(frame: &mut Frame, app: &App) {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    if main.width >= LIST_MIN_WIDTH {
        let list_width = (main.width / 3).clamp(12, 28);
        let [list, chat] =
            Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
        draw_list(frame, app, list);
        draw_chat(frame, app, chat);
    } else {
        draw_chat(frame, app, main);
    }
    draw_input(frame, app, input);
    draw_status(frame, app, status);
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let inner_width = usize::from(area.width.saturating_sub(2));
    let items: Vec<ListItem> = app
        .conversations
        .iter()
        .map(|c| {
            let badge = if c.unread > 0 {
                format!(" ({})", c.unread)
            } else {
                String::new()
            };
            let title_width = inner_width.saturating_sub(badge.chars().count());
            let title = pad(&truncate(&c.title, title_width), title_width);
            let mut first = vec![Span::styled(
                title,
                Style::default().add_modifier(Modifier::BOLD),
            )];
            if c.unread > 0 {
                first.push(Span::styled(
                    badge,
                    Style::default()
                        .fg(Color::Green)
                        .add_modifier(Modifier::BOLD),
                ));
            }
            let preview = match c.last() {
                Some(m) if m.system => format!(" {}", m.text),
                Some(m) if c.is_group() || m.sender == app.me => {
                    format!(" {}: {}", app.user_name(m.sender), m.text)
                }
                Some(m) => format!(" {}", m.text),
                None => " (no messages)".into(),
            };
            let preview = truncate(&preview.replace('\n', " "), inner_width);
            ListItem::new(vec![
                Line::from(first),
                Line::styled(preview, Style::default().fg(Color::DarkGray)),
            ])
        })
        .collect();
    let mut state = ListState::default().with_selected(
        app.selected
            .as_ref()
            .and_then(|s| app.conversations.iter().position(|c| &c.id == s)),
    );
    let list = List::new(items)
        .block(Block::bordered().title("chats"))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, area, &mut state);
}

/// The tick after one of our messages, as (text, style).
pub fn tick_span(tick: Tick, ascii: bool) -> Span<'static> {
    let gray = Style::default().fg(Color::Gray);
    match (tick, ascii) {
        (Tick::Pending, false) => Span::styled("…", gray),
        (Tick::Pending, true) => Span::styled("[..]", gray),
        (Tick::Failed, false) => Span::styled("✗ not sent", Style::default().fg(Color::Red)),
        (Tick::Failed, true) => Span::styled("[failed]", Style::default().fg(Color::Red)),
        (Tick::Sent, false) => Span::styled("✓", gray),
        (Tick::Sent, true) => Span::styled("[sent]", gray),
        (Tick::Delivered, false) => Span::styled("✓✓", gray),
        (Tick::Delivered, true) => Span::styled("[delivered]", gray),
        (Tick::Read, false) => Span::styled(
            "✓✓",
            Style::default()
                .fg(Color::LightBlue)
                .add_modifier(Modifier::BOLD),
        ),
        (Tick::Read, true) => Span::styled("[read]", Style::default().fg(Color::LightBlue)),
    }
}

/// One message or separator as styled pieces, before wrapping.
fn pieces(app: &App, c: &Conversation, line: &ChatLine<'_>, width: usize) -> Vec<Span<'static>> {
    match line {
        ChatLine::Day(d) => {
            let label = format!(" {d} ");
            let side = width.saturating_sub(label.chars().count()) / 2;
            let rule = "─".repeat(side.min(8));
            let text = format!("{rule}{label}{rule}");
            let pad_left = width.saturating_sub(text.chars().count()) / 2;
            vec![Span::styled(
                format!("{}{text}", " ".repeat(pad_left)),
                Style::default().fg(Color::DarkGray),
            )]
        }
        ChatLine::Message(m) => {
            let time = Span::styled(
                format!("{} ", clock(m.created_at_ms)),
                Style::default().fg(Color::DarkGray),
            );
            if m.system {
                return vec![
                    time,
                    Span::styled(
                        format!("* {}", m.text),
                        Style::default()
                            .fg(Color::DarkGray)
                            .add_modifier(Modifier::ITALIC),
                    ),
                ];
            }
            let mine = m.sender == app.me;
            let who_style = if mine {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Yellow)
            };
            let mut out = vec![
                time,
                Span::styled(format!("{}: ", app.user_name(m.sender)), who_style),
                Span::raw(m.text.clone()),
            ];
            if mine {
                out.push(Span::raw(" "));
                out.push(tick_span(c.tick(m), app.ascii));
            }
            out
        }
    }
}

/// Breaks styled pieces into lines of at most `width` columns (by character; a newline
/// in a message starts a new line).
fn wrap(pieces: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur: Vec<Span<'static>> = Vec::new();
    let mut used = 0usize;
    for piece in pieces {
        let style = piece.style;
        let mut buf = String::new();
        for ch in piece.content.chars() {
            if ch == '\n' {
                cur.push(Span::styled(std::mem::take(&mut buf), style));
                lines.push(Line::from(std::mem::take(&mut cur)));
                used = 0;
                continue;
            }
            let w = Span::raw(ch.to_string()).width();
            if used + w > width && used > 0 {
                cur.push(Span::styled(std::mem::take(&mut buf), style));
                lines.push(Line::from(std::mem::take(&mut cur)));
                used = 0;
            }
            buf.push(ch);
            used += w;
        }
        if !buf.is_empty() {
            cur.push(Span::styled(buf, style));
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(Line::from(cur));
    }
    lines
}

fn draw_chat(frame: &mut Frame, app: &App, area: Rect) {
    let Some(c) = app.selected_conversation() else {
        let hint = Paragraph::new(vec![
            Line::raw("No conversation yet."),
            Line::raw("Start one: /new @user"),
            Line::raw("or a group: /group NAME @a @b"),
        ])
        .block(Block::bordered().title("natter"));
        frame.render_widget(hint, area);
        return;
    };
    let mut title = c.title.clone();
    if !app.connected {
        title.push_str(" (offline)");
    }
    let mut header = vec![Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(p) = app.presence_line() {
        let style = if p == "online" {
            Style::default().fg(Color::Green)
        } else {
            Style::default().fg(Color::DarkGray)
        };
        header.push(Span::styled(format!(" · {p}"), style));
    }
    let mut block = Block::bordered().title(Line::from(header));
    if let Some(t) = app.typing_line() {
        block = block.title_bottom(Line::from(Span::styled(
            t,
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::ITALIC),
        )));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let height = usize::from(inner.height);
    if width == 0 || height == 0 {
        return;
    }
    let mut lines: Vec<Line<'static>> = Vec::new();
    if c.loading && c.messages.is_empty() {
        lines.push(Line::styled(
            "loading…",
            Style::default().fg(Color::DarkGray),
        ));
    } else if c.more && c.oldest_seq() > 1 {
        lines.push(Line::styled(
            if c.loading {
                "loading older messages…"
            } else {
                "PgUp for older messages"
            },
            Style::default().fg(Color::DarkGray),
        ));
    }
    for l in c.lines() {
        lines.extend(wrap(pieces(app, c, &l, width), width));
    }
    let scroll = c.scroll.min(lines.len().saturating_sub(height));
    let end = lines.len() - scroll;
    let start = end.saturating_sub(height);
    let shown: Vec<Line> = lines.drain(start..end).collect();
    frame.render_widget(Paragraph::new(shown), inner);
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title("message");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    // Keep the end of a long input (and the cursor) in view.
    let room = usize::from(inner.width.saturating_sub(3));
    let chars: Vec<char> = app.input.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
    let text = format!("> {tail}");
    let cursor_x = inner.x + u16::try_from(Span::raw(text.as_str()).width()).unwrap_or(0);
    frame.render_widget(Paragraph::new(text), inner);
    frame.set_cursor_position((cursor_x.min(inner.right().saturating_sub(1)), inner.y));
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![Span::styled(
        format!(" {} ", app.my_name),
        Style::default().add_modifier(Modifier::REVERSED),
    )];
    if app.status.is_empty() {
        spans.push(Span::styled(
            format!(" {HELP}"),
            Style::default().fg(Color::DarkGray),
        ));
    } else {
        spans.push(Span::raw(format!(" {}", app.status)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn pad(s: &str, width: usize) -> String {
    format!("{s:<width$}")
}

#[cfg(test)]
mod tests {
    use natter_client::{ConversationId, Event, v1};
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::app::{
        AppEvent,
        tests::{BO, CY, ME, T0, app, dm, history, msg},
    };

    fn render(app: &App, w: u16, h: u16) -> Buffer {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        t.backend().buffer().clone()
    }

    fn rows(b: &Buffer) -> Vec<String> {
        (0..b.area.height)
            .map(|y| {
                (0..b.area.width)
                    .map(|x| b[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    fn screen(b: &Buffer) -> String {
        rows(b).join("\n")
    }

    /// ann with bo (selected, her "hi" delivered) and cy (2 unread).
    fn chatting() -> App {
        let mut a = app();
        let with_bo = dm(ME, BO);
        let with_cy = dm(ME, CY);
        history(
            &mut a,
            &with_bo,
            vec![
                msg(&with_bo, 1, BO, T0, "hey ann"),
                msg(&with_bo, 2, ME, T0 + 60_000, "hi"),
            ],
        );
        history(&mut a, &with_cy, vec![]);
        for seq in 1..=2 {
            a.on_event(AppEvent::Server(Event::Message(msg(
                &with_cy,
                seq,
                CY,
                T0 + 120_000,
                "lunch?",
            ))));
        }
        a.on_event(AppEvent::Tick {
            now_ms: T0 + 130_000,
        });
        a.status.clear();
        a
    }

    fn receipt(conv: &ConversationId, kind: v1::ReceiptKind, seq: u64) -> AppEvent {
        AppEvent::Server(Event::Receipt(v1::Receipt {
            conversation_id: conv.to_string(),
            user_id: BO,
            kind: kind as i32,
            up_to_seq: seq,
            ..Default::default()
        }))
    }

    /// The cells of the tick after "hi".
    fn tick_cells(b: &Buffer) -> (String, Style) {
        for (y, row) in rows(b).iter().enumerate() {
            if let Some(col) = row.find("you: hi ") {
                let x = u16::try_from(row[..col + "you: hi ".len()].chars().count()).unwrap();
                let y = u16::try_from(y).unwrap();
                let cells = (x..x + 2)
                    .map(|x| b[(x, y)].symbol().to_owned())
                    .collect::<String>();
                return (cells.trim().to_owned(), b[(x, y)].style());
            }
        }
        panic!("no own message in\n{}", screen(b));
    }

    #[test]
    fn list_shows_names_unread_counts_and_previews() {
        let a = chatting();
        let b = render(&a, 80, 24);
        let s = screen(&b);
        assert!(s.contains("chats"), "{s}");
        let cy_row = rows(&b).into_iter().find(|r| r.contains("│cy")).expect(&s);
        assert!(cy_row.contains("(2)"), "{cy_row}");
        assert!(s.contains(" lunch?"), "{s}");
        assert!(s.contains("│bo "), "{s}");
        assert!(s.contains(" you: hi"), "{s}");
        // The chat pane: the day, both messages, the input line and help.
        assert!(s.contains("Mon 30 Nov 2026"), "{s}");
        assert!(s.contains("10:00 bo: hey ann"), "{s}");
        assert!(s.contains("10:01 you: hi ✓"), "{s}");
        assert!(s.contains("> "), "{s}");
        assert!(s.contains("/quit"), "{s}");
    }

    #[test]
    fn ticks_render_sent_delivered_read() {
        let mut a = chatting();
        let c = dm(ME, BO);
        let (t, _) = tick_cells(&render(&a, 80, 24));
        assert_eq!(t, "✓");
        a.on_event(receipt(&c, v1::ReceiptKind::Delivered, 2));
        let (t, style) = tick_cells(&render(&a, 80, 24));
        assert_eq!(t, "✓✓");
        assert_ne!(style.fg, Some(Color::LightBlue));
        a.on_event(receipt(&c, v1::ReceiptKind::Read, 2));
        let (t, style) = tick_cells(&render(&a, 80, 24));
        assert_eq!(t, "✓✓");
        assert_eq!(style.fg, Some(Color::LightBlue));
        // The textual fallback.
        a.ascii = true;
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("you: hi [read]"), "{s}");
    }

    #[test]
    fn typing_indicator_and_pending_message() {
        let mut a = chatting();
        let c = dm(ME, BO);
        a.on_event(AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: c.to_string(),
            user_id: BO,
            active: true,
            ..Default::default()
        })));
        for ch in "see you".chars() {
            a.on_event(crate::app::tests::key(
                ratatui::crossterm::event::KeyCode::Char(ch),
            ));
        }
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("bo is typing…"), "{s}");
        assert!(s.contains("> see you"), "{s}");
        a.on_event(crate::app::tests::key(
            ratatui::crossterm::event::KeyCode::Enter,
        ));
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("you: see you …"), "{s}");
    }

    #[test]
    fn header_shows_presence_and_footer_recording() {
        let mut a = chatting();
        let c = dm(ME, BO);
        a.on_event(AppEvent::Server(Event::Presence(v1::UserPresence {
            user_id: BO,
            state: v1::PresenceState::Online as i32,
            last_seen_ms: 0,
        })));
        a.on_event(AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: c.to_string(),
            user_id: BO,
            active: true,
            state: v1::ChatState::Recording as i32,
            expires_in_ms: 6_000,
        })));
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("bo · online"), "{s}");
        assert!(s.contains("bo is recording…"), "{s}");
        a.on_event(AppEvent::Server(Event::Presence(v1::UserPresence {
            user_id: BO,
            state: v1::PresenceState::Offline as i32,
            last_seen_ms: T0 + 125_000,
        })));
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("bo · last seen 10:02"), "{s}");
    }

    #[test]
    fn survives_resizing_down_to_tiny() {
        let mut a = chatting();
        let c = dm(ME, BO);
        // A long message that has to wrap, and many of them to scroll.
        let long = "word ".repeat(60);
        history(
            &mut a,
            &c,
            (3..40)
                .map(|s| msg(&c, s, BO, T0 + s * 1000, &long))
                .collect(),
        );
        a.input = "x".repeat(200);
        for (w, h) in [
            (80, 24),
            (60, 20),
            (40, 12),
            (30, 8),
            (10, 5),
            (3, 2),
            (0, 0),
        ] {
            a.on_event(AppEvent::Resize {
                width: w,
                height: h,
            });
            let b = render(&a, w, h);
            if (w, h) == (40, 12) {
                let s = screen(&b);
                assert!(s.contains("chats"), "{s}");
                assert!(s.contains("word"), "{s}");
            }
        }
        // Scrolled far up, still fine.
        for _ in 0..50 {
            a.on_event(crate::app::tests::key(
                ratatui::crossterm::event::KeyCode::PageUp,
            ));
        }
        render(&a, 40, 12);
    }

    #[test]
    fn empty_state_explains_how_to_start() {
        let mut a = app();
        a.status.clear();
        let s = screen(&render(&a, 80, 24));
        assert!(s.contains("/new @user"), "{s}");
    }
}
