//! The `pagestream image` commands as a user runs them: example, show (text and JSON), verify on
//! good and damaged directories, and clean command-line errors.

mod common;

use common::{pagestream, stderr, stdout};
use std::fs;

#[test]
fn help_lists_the_commands() {
    let o = pagestream(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("image"), "{}", stdout(&o));
    let o = pagestream(&["image", "--help"]);
    for cmd in ["show", "verify", "example"] {
        assert!(stdout(&o).contains(cmd), "{cmd} missing: {}", stdout(&o));
    }
}

#[test]
fn example_show_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chain");
    let d = dir.to_str().unwrap();
    let o = pagestream(&["image", "example", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("PE_PARENT") && stdout(&o).contains("ok: "), "{}", stdout(&o));

    let o = pagestream(&["image", "show", "--json", &format!("{d}/2")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["parent"], "../1");
    let entries = doc["pagemaps"][0]["entries"].as_array().unwrap();
    assert_eq!(doc["pagemaps"][0]["file"], "pagemap-1.img");
    assert_eq!(entries[0]["pages_id"], 1);
    assert!(entries.iter().skip(1).all(|e| e["vaddr"].as_str().unwrap().starts_with("0x")));

    let o = pagestream(&["image", "verify", &format!("{d}/2")]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Running the example twice must not clobber the first one.
    let o = pagestream(&["image", "example", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

#[test]
fn verify_reports_defects_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chain");
    let d = dir.to_str().unwrap();
    assert!(pagestream(&["image", "example", d]).status.success());

    // A pages file in the parent shorter than its pagemap claims.
    let pages = dir.join("1/pages-1.img");
    let len = fs::metadata(&pages).unwrap().len();
    fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(len - 1).unwrap();
    let o = pagestream(&["image", "verify", &format!("{d}/2")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("pages-1.img") && err.contains("claims"), "{err}");

    // A pagemap cut in the middle of a record names the file and offset.
    let pm = dir.join("2/pagemap-1.img");
    let data = fs::read(&pm).unwrap();
    fs::write(&pm, &data[..data.len() - 2]).unwrap();
    let o = pagestream(&["image", "show", &format!("{d}/2")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("pagemap-1.img at offset") && err.contains("truncated record"), "{err}");

    // Not a directory at all.
    let o = pagestream(&["image", "verify", &format!("{d}/nope")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

#[test]
fn bad_command_line_is_a_usage_error() {
    let o = pagestream(&["image", "show"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
    let o = pagestream(&["image", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}
