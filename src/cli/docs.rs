//! `completions` and `man`: generated from the same clap definitions the binary parses, so
//! they cannot drift from the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder completions bash > /etc/bash_completion.d/image-builder
  image-builder completions zsh > \"${fpath[1]}/_image-builder\"
  image-builder completions fish > ~/.config/fish/completions/image-builder.fish")]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args)]
#[command(after_help = "Examples:
  image-builder man | man -l -
  image-builder man --dir /usr/local/share/man/man1")]
pub struct ManArgs {
    /// Write one page per command (image-builder.1, image-builder-build.1, ...) into this
    /// directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs, mut command: Command) -> ExitCode {
    clap_complete::generate(
        args.shell,
        &mut command,
        "image-builder",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}

pub fn man(args: ManArgs, command: Command) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("cannot write the page")?,
    }
    Ok(ExitCode::SUCCESS)
}
