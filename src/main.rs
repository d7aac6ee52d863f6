//! The `pagestream` command line: argument parsing, logging setup and dispatch to subcommands.

mod image_example;
mod image_show;
mod image_verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pagestream moves the memory of a running Linux process to another host with the least
/// possible downtime (dirty tracking, compressed streaming, CRIU interop).
#[derive(Parser)]
#[command(name = "pagestream", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and check CRIU image directories.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Print every pagemap of an image directory (entries with vaddr, nr_pages, flags), as
    /// `crit show` does.
    Show {
        /// The image directory.
        dir: PathBuf,
        /// One JSON document; each pagemap in `crit show`'s layout.
        #[arg(long)]
        json: bool,
    },
    /// Check an image directory and its parent chain; exit 1 with the defect on any error.
    Verify {
        /// The image directory.
        dir: PathBuf,
        /// Parent links may not leave this directory (default: the directory holding DIR).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Write a demonstration pre-dump chain (a full image and an incremental one with parent
    /// holes and lazy pages) into DIR, then show and verify it.
    Example {
        /// Where to create the chain (DIR/1 and DIR/2); must not exist.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(ImageCommand::Show { dir, json }) => image_show::run(&dir, json),
        Command::Image(ImageCommand::Verify { dir, root }) => image_verify::run(&dir, root.as_deref()),
        Command::Image(ImageCommand::Example { dir }) => image_example::run(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `pagestream image show DIR | head` is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagestream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
