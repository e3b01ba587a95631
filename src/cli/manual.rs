//! The manual pages: `image-catalog(1)` and one page per subcommand
//! (`image-catalog-serve(1)`, …), which the top page's SUBCOMMANDS section names.

use std::path::Path;

use clap::CommandFactory;

use super::{Cli, CliError};

/// What every page ends with: the variables every command reads, and what its exit
/// status means (docs/guide/09-reference.md, "Exit codes").
const COMMON_SECTIONS: &str = r#".SH ENVIRONMENT
.TP
\fBIMAGE_CATALOG_CONFIG\fR
The config file, when \fB\-\-config\fR is not given (default \fIconfig.toml\fR in the
working folder).
.TP
\fBIMAGE_CATALOG_DATABASE_URL\fR
With \fB[store] backend = "postgres"\fR, the database URL, instead of \fB[store] url\fR:
keep the password out of config.toml (for systemd, in an \fBEnvironmentFile=\fR only
root can read).
.TP
\fBRUST_LOG\fR
The log filter: \fBerror\fR, \fBwarn\fR, \fBinfo\fR (the default) or \fBdebug\fR.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success, including a clean stop on SIGTERM or SIGINT.
.TP
\fB1\fR
A failure at run time that a restart may fix: the address cannot be bound, the data
folder is in use, a write failed and the store stopped, the database cannot be reached.
.TP
\fB2\fR
Bad usage or a bad config, including a TLS pair that does not load.
.TP
\fB3\fR
The store needs an operator: damaged, behind its high\-water mark, of an unknown
format, a data folder that is not a writable directory, or a database schema of
another major version. A restart cannot help.
.SH "SEE ALSO"
The guide, /usr/share/doc/image\-catalog/guide/ (docs/guide in the source).
"#;

/// The page of `subcommand` (the top page when `None`), as roff.
pub fn page(subcommand: Option<&str>) -> Result<Vec<u8>, CliError> {
    let top = top_command();
    let command = match subcommand {
        None => top,
        Some(name) => top
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| CliError::Usage(format!("no subcommand '{name}' has a page")))?,
    };
    render(command)
}

/// Writes every page into `dir` as NAME.1 and returns the files' names.
pub fn write_all(dir: &Path) -> Result<Vec<String>, CliError> {
    let top = top_command();
    let mut commands = vec![top.clone()];
    commands.extend(top.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    commands
        .into_iter()
        .map(|command| {
            let name = format!("{}.1", display_name(&command));
            let path = dir.join(&name);
            std::fs::write(&path, render(command)?)
                .map_err(|e| CliError::Runtime(format!("cannot write {}: {e}", path.display())))?;
            Ok(name)
        })
        .collect()
}

/// The command as the pages show it: no `help` subcommand (it has no page of its own)
/// and built, so that subcommands carry their display names (`image-catalog-serve`).
fn top_command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

fn display_name(command: &clap::Command) -> String {
    command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned()
}

fn render(command: clap::Command) -> Result<Vec<u8>, CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .manual("image-catalog")
        .render(&mut out)
        .map_err(|e| CliError::Runtime(format!("cannot render the man page: {e}")))?;
    out.extend_from_slice(COMMON_SECTIONS.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_the_top_page_names_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        let top = String::from_utf8(page(None).unwrap()).unwrap();
        for command in top_command().get_subcommands() {
            let name = display_name(command);
            // roff writes a hyphen as `\-`.
            let named = format!("{}(1)", name.replace('-', "\\-"));
            assert!(top.contains(&named), "the top page names {named}");
            assert!(written.contains(&format!("{name}.1")), "{written:?}");
        }
        assert!(written.contains(&"image-catalog.1".to_owned()));
        assert!(!written.iter().any(|n| n.contains("help")), "{written:?}");
        for name in &written {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.contains(".SH ENVIRONMENT"), "{name}");
            assert!(text.contains("IMAGE_CATALOG_DATABASE_URL"), "{name}");
            assert!(text.contains(".SH \"EXIT STATUS\""), "{name}");
        }
    }

    #[test]
    fn a_subcommand_page_shows_its_options() {
        let serve = String::from_utf8(page(Some("serve")).unwrap()).unwrap();
        assert!(serve.contains(".TH image-catalog-serve 1"), "{serve}");
        assert!(serve.contains("accept\\-data\\-loss"), "{serve}");
        assert!(page(Some("no-such")).is_err());
    }
}
