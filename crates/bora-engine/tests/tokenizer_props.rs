//! Property tests over random strings, for Mixtral 8x7B's (v1) and 8x22B's (v3) tokenizers
//! built from their sentencepiece models: decoding inverts encoding, and streamed pieces add up
//! to the whole decoding without ever releasing half a character.

use std::path::PathBuf;
use std::sync::OnceLock;

use bora_engine::{IncrementalDecoder, Tokenizer};
use proptest::prelude::*;

fn tok(v: &str) -> &'static Tokenizer {
    static V1: OnceLock<Tokenizer> = OnceLock::new();
    static V3: OnceLock<Tokenizer> = OnceLock::new();
    let cell = if v == "v1" { &V1 } else { &V3 };
    cell.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../models/tokenizers/tokenizer.model.{v}"));
        Tokenizer::from_file(&p).unwrap()
    })
}

/// Strings mixing ASCII, runs of whitespace, digits, accents, CJK, emoji (several code points
/// and byte-fallback tokens each), control characters and control-token spellings. Not `▁`
/// (U+2581): sentencepiece writes spaces as that character, so it decodes to a space there too.
fn text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        "[a-zA-Z]{1,6}",
        "[ ]{1,5}",
        "[\\n\\t\\r]{1,3}",
        "[0-9]{1,4}",
        "[.,!?;:'\"(){}<>/\\\\_-]",
        "[éüßçñøæœÀ-ÿ]{1,3}",
        "[一-龥ぁ-んア-ン가-힣]{1,3}",
        "[🙂🚀👍🏽🧿☃✈️]{1,2}",
        "[\\u{0}-\\u{1f}\\u{7f}\\u{a0}\\u{200b}\\u{301}]",
        Just("[INST]".to_string()),
        Just("</s>".to_string()),
        Just("[TOOL_CALLS]".to_string()),
    ];
    proptest::collection::vec(atom, 0..12).prop_map(|parts| parts.concat())
}

fn streamed(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut dec = IncrementalDecoder::new();
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = dec.push(tok, id).unwrap() {
            assert!(
                !piece.contains('\u{FFFD}'),
                "released a partial character: {piece:?}"
            );
            out.push_str(&piece);
        }
    }
    if let Some(piece) = dec.flush(tok).unwrap() {
        out.push_str(&piece);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_and_stream(s in text()) {
        for v in ["v1", "v3"] {
            let t = tok(v);
            let ids = t.encode(&s).unwrap();
            let whole = t.decode(&ids).unwrap();
            prop_assert_eq!(&whole, &s, "{} round trip", v);
            prop_assert_eq!(streamed(t, &ids), whole, "{} stream", v);
        }
    }

    #[test]
    fn a_text_encoded_in_pieces_is_encoded_as_a_whole(
        parts in proptest::collection::vec(text(), 1..40),
        piece in 1usize..64,
    ) {
        let s = parts.join(" ");
        for v in ["v1", "v3"] {
            let t = tok(v);
            prop_assert_eq!(t.encode_in_pieces(&s, piece).unwrap(), t.encode(&s).unwrap(), "{}", v);
        }
    }
}

#[test]
fn a_long_text_is_encoded_in_pieces_as_a_whole() {
    // Prose with runs of spaces, lines and non-ASCII text, 300 KB: cut into about 5 pieces.
    let mut s = String::new();
    let words = [
        "the",
        "expert",
        "  routing",
        "é",
        "\n",
        "一二",
        "x,",
        "\t",
        "🙂",
        "[INST]",
    ];
    for i in 0..60_000 {
        s.push_str(words[(i * 7 + i / 3) % words.len()]);
        s.push(' ');
    }
    for t in [tok("v1"), tok("v3"), fixture()] {
        assert!(t.cuts_at_spaces().unwrap());
        assert_eq!(t.encode_long(&s).unwrap(), t.encode(&s).unwrap());
    }
}

/// The tiny fixture's `tokenizer.json` (Hugging Face's format).
fn fixture() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/fixtures/tiny-mixtral/tokenizer.json");
        Tokenizer::from_file(&p).unwrap()
    })
}
