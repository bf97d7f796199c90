//! Cgroup patterns: a `cgroups` entry (or `nettrust attach --cgroup`) holding `*` (any bytes
//! within one path component) or `**` (a whole component: any number of components) names the
//! cgroups that match it, now and later.
//!
//! A pattern is parsed against the cgroup v2 mount and kept relative to it, as the kernel's
//! `cgroup_mkdir` tracepoint reports paths (`/system.slice/docker-1.scope`, relative to the v2
//! hierarchy's root). A trailing `**` matches the descendants of the cgroup before it (one or
//! more components), a `**` elsewhere zero or more components. The programs are attached once at
//! the pattern's attach point: the deepest existing cgroup named by its literal leading
//! components. The pattern is compiled into the bit-parallel matcher of
//! [`nettrust_common::PatternMasks`], run by the kernel on each new cgroup and by the daemon on
//! the cgroups that exist at start, so both classify alike.

use std::path::{Component, Path, PathBuf};

use nettrust_common::{
    MAX_CGROUP_DEPTH, MAX_PATTERN_TOKENS, PATTERN_WORDS, PatternBits, PatternMasks, PolicyRef,
    pattern_accepts, pattern_closure, pattern_step,
};

/// Why the nftables backend refuses patterns: its rules match listed cgroup ids, set when a rule
/// is added, so a cgroup created later could only be filtered after the daemon noticed it.
pub const NEEDS_EBPF: &str = "cgroup patterns need the eBPF backend (firewall_backend = \"ebpf\")";

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not an absolute path, or not valid UTF-8.
    #[error("cgroup pattern {0}: must be an absolute UTF-8 path")]
    NotAbsolute(String),
    /// The pattern is not below the cgroup v2 mount.
    #[error("cgroup pattern {pattern}: not below the cgroup v2 mount {mount}")]
    OutsideMount {
        /// The pattern.
        pattern: String,
        /// The cgroup v2 mount point.
        mount: String,
    },
    /// `.`/`..` or an empty component.
    #[error("cgroup pattern {0}: `.`, `..` and empty components are not allowed")]
    BadComponent(String),
    /// `**` inside a component (`a**`, `**b`).
    #[error("cgroup pattern {0}: `**` must be a whole path component")]
    DoubleStarPart(String),
    /// `**` right after `**`.
    #[error("cgroup pattern {0}: `**/**` is the same as `**`; write it once")]
    RepeatedDoubleStar(String),
    /// A pattern without `**` names cgroups deeper than the data path looks.
    #[error(
        "cgroup pattern {pattern}: matches cgroups {depth} levels below the cgroup v2 root; the filter sees at most {max}"
    )]
    TooDeep {
        /// The pattern.
        pattern: String,
        /// The level of the cgroups it matches.
        depth: usize,
        /// The deepest level the programs see.
        max: usize,
    },
    /// The compiled pattern is too long for the kernel matcher.
    #[error(
        "cgroup pattern {pattern}: {tokens} matcher tokens (bytes and stars below the mount); at most {max}"
    )]
    TooLong {
        /// The pattern.
        pattern: String,
        /// Its token count.
        tokens: usize,
        /// The limit.
        max: usize,
    },
}

/// One path component of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Bytes with `*` (any bytes but `/`) in them, or none (a literal component).
    Glob(String),
    /// `**`.
    Any,
}

/// A parsed cgroup pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPattern {
    /// The pattern as configured (absolute, below the mount).
    text: String,
    /// The cgroup v2 mount it is below.
    mount: PathBuf,
    /// Its components below the mount.
    parts: Vec<Part>,
    /// Its compiled matcher (default policy), for matching in userspace.
    compiled: (PatternMasks, Vec<PatternBits>),
}

/// One matcher token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Star,
    Any,
    Exit,
}

/// The configured cgroup entries split into literal paths and patterns (each in order).
pub fn split(cgroups: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    cgroups.into_iter().partition(|c| !is_pattern(c))
}

/// Whether a configured cgroup entry is a pattern (holds `*`), not a literal path.
pub fn is_pattern(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&b'*')
}

impl CgroupPattern {
    /// Parses `path` as a pattern below the cgroup v2 `mount`.
    pub fn parse(path: &Path, mount: &Path) -> Result<Self, PatternError> {
        let text = path
            .to_str()
            .filter(|t| t.starts_with('/'))
            .ok_or_else(|| PatternError::NotAbsolute(path.display().to_string()))?
            .to_owned();
        let mount_text = mount.to_string_lossy().trim_end_matches('/').to_owned();
        let rest = text
            .strip_prefix(&mount_text)
            .filter(|r| r.starts_with('/') && r.len() > 1)
            .ok_or_else(|| PatternError::OutsideMount {
                pattern: text.clone(),
                mount: mount.display().to_string(),
            })?;
        if rest
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(PatternError::BadComponent(text));
        }
        let mut parts = Vec::new();
        for component in rest.split('/').skip(1) {
            let part = match component {
                "**" => Part::Any,
                c if c.contains("**") => return Err(PatternError::DoubleStarPart(text)),
                c => Part::Glob(c.to_owned()),
            };
            if part == Part::Any && parts.last() == Some(&Part::Any) {
                return Err(PatternError::RepeatedDoubleStar(text));
            }
            parts.push(part);
        }
        let max = MAX_CGROUP_DEPTH as usize - 1;
        if !parts.contains(&Part::Any) && parts.len() > max {
            return Err(PatternError::TooDeep {
                pattern: text,
                depth: parts.len(),
                max,
            });
        }
        let mut pattern = Self {
            text,
            mount: mount.to_owned(),
            parts,
            compiled: (PatternMasks::default(), Vec::new()),
        };
        let tokens = pattern.tokens().len();
        if tokens > MAX_PATTERN_TOKENS {
            return Err(PatternError::TooLong {
                pattern: pattern.text,
                tokens,
                max: MAX_PATTERN_TOKENS,
            });
        }
        pattern.compiled = pattern.compile(PolicyRef::default());
        Ok(pattern)
    }

    /// The pattern as configured.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cgroup named by the literal components before the first wildcard.
    pub fn literal_prefix(&self) -> PathBuf {
        let mut path = self.mount.clone();
        for part in &self.parts {
            match part {
                Part::Glob(c) if !c.contains('*') => path.push(c),
                _ => break,
            }
        }
        path
    }

    /// Where the programs are attached for this pattern: the literal prefix, or its deepest
    /// existing ancestor (at worst the v2 root) while it does not exist yet.
    pub fn attach_point(&self) -> PathBuf {
        let mut path = self.literal_prefix();
        while !path.is_dir() && path != self.mount {
            path.pop();
        }
        path
    }

    /// The matcher tokens: `/` and the bytes of each component (`*` a star), a trailing `**` as
    /// `/` then any bytes, a middle `**` as `/`, any bytes, exit (skippable as a whole).
    fn tokens(&self) -> Vec<Token> {
        let mut tokens = Vec::new();
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter().enumerate() {
            tokens.push(Token::Byte(b'/'));
            match part {
                Part::Any if i == last => tokens.push(Token::Any),
                Part::Any => tokens.extend([Token::Any, Token::Exit]),
                Part::Glob(c) => {
                    let mut star = false;
                    for &b in c.as_bytes() {
                        // Consecutive stars within a component are one star.
                        if b == b'*' && !star {
                            tokens.push(Token::Star);
                        } else if b != b'*' {
                            tokens.push(Token::Byte(b));
                        }
                        star = b == b'*';
                    }
                }
            }
        }
        tokens
    }

    /// The pattern compiled for the kernel matcher: its masks (with `policy`) and the literal
    /// mask of every byte value (index = byte).
    pub fn compile(&self, policy: PolicyRef) -> (PatternMasks, Vec<PatternBits>) {
        let tokens = self.tokens();
        let mut masks = PatternMasks {
            policy,
            used: 1,
            ..PatternMasks::default()
        };
        let mut lit = vec![[0u64; PATTERN_WORDS]; 256];
        let set = |bits: &mut PatternBits, bit: usize| bits[bit / 64] |= 1 << (bit % 64);
        let last = self.parts.len() - 1;
        for (i, token) in tokens.iter().enumerate() {
            match token {
                Token::Byte(b) => set(&mut lit[usize::from(*b)], i + 1),
                Token::Star => {
                    set(&mut masks.star_loop, i + 1);
                    set(&mut masks.star, i);
                }
                Token::Any => {
                    set(&mut masks.any_loop, i + 1);
                    set(&mut masks.star, i);
                }
                Token::Exit => set(&mut masks.eps, i),
            }
        }
        // A middle `**` (tokens `/`, any, exit) may match no component: skip its three tokens.
        let mut start = 0;
        for (i, part) in self.parts.iter().enumerate() {
            let len = match part {
                Part::Any if i == last => 2,
                Part::Any => {
                    set(&mut masks.skip, start);
                    3
                }
                Part::Glob(c) => 1 + glob_tokens(c),
            };
            start += len;
        }
        set(&mut masks.accept, tokens.len());
        (masks, lit)
    }

    /// Whether the cgroup at `relative` (its path below the v2 mount, `/a/b`) matches, by the
    /// same matcher the kernel runs.
    pub fn matches_relative(&self, relative: &str) -> bool {
        let (masks, lit) = &self.compiled;
        run_matcher(masks, lit, relative.as_bytes())
    }

    /// Whether the cgroup at the absolute `path` matches.
    pub fn matches(&self, path: &Path) -> bool {
        path.strip_prefix(&self.mount)
            .ok()
            .and_then(Path::to_str)
            .is_some_and(|rel| !rel.is_empty() && self.matches_relative(&format!("/{rel}")))
    }
}

/// The tokens of one glob component (consecutive stars count once).
fn glob_tokens(component: &str) -> usize {
    let mut count = 0;
    let mut star = false;
    for b in component.bytes() {
        if b != b'*' || !star {
            count += 1;
        }
        star = b == b'*';
    }
    count
}

/// Runs a compiled matcher over `path` (bytes relative to the v2 root).
pub fn run_matcher(masks: &PatternMasks, lit: &[PatternBits], path: &[u8]) -> bool {
    let mut d = [0u64; PATTERN_WORDS];
    d[0] = 1;
    pattern_closure(&mut d, masks);
    for &byte in path {
        if !pattern_step(&mut d, masks, &lit[usize::from(byte)], byte) {
            return false;
        }
    }
    pattern_accepts(&d, masks)
}

/// The path of `path` below the v2 `mount` as the kernel reports it (`/a/b`; the root is `/`).
pub fn relative_path(path: &Path, mount: &Path) -> Option<String> {
    let rel = path.strip_prefix(mount).ok()?;
    let mut out = String::new();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return None;
        };
        out.push('/');
        out.push_str(name.to_str()?);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests;
