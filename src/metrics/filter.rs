//! Which controls become series: the include / exclude lists of the configuration as one
//! small value, applied when a structure file is loaded (original-exporter.md §3.3).
//!
//! A control passes when it matches every non-empty include list and no exclude list.
//! Rooms, types and categories compare exactly (case-sensitive, like the original); names
//! are globs as Python's `fnmatch` reads them (`*`, `?`, `[...]`, see [`name_pattern`]). A control without a known room is never excluded
//! by room, but fails a non-empty `include_rooms` (same for categories).

use crate::config::FilterConfig;

/// A glob in `exclude_names` / `include_names` did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: '{pattern}' is not a valid glob pattern: {reason}")]
pub struct FilterError {
    /// Config field holding the pattern.
    pub field: &'static str,
    /// The pattern.
    pub pattern: String,
    /// Why it failed.
    pub reason: String,
}

/// Compiled include / exclude lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    exclude_rooms: Vec<String>,
    exclude_types: Vec<String>,
    exclude_names: Vec<glob::Pattern>,
    exclude_categories: Vec<String>,
    include_rooms: Vec<String>,
    include_types: Vec<String>,
    include_names: Vec<glob::Pattern>,
    include_categories: Vec<String>,
}

/// What the filter looks at for one control.
#[derive(Debug, Clone, Copy)]
pub struct ControlFacts<'a> {
    /// Control name.
    pub name: &'a str,
    /// Control type.
    pub control_type: &'a str,
    /// Room name, if the control has a known room.
    pub room: Option<&'a str>,
    /// Category name, if known.
    pub category: Option<&'a str>,
}

/// A name pattern with the meaning Python's `fnmatch` gives it (the original matched names
/// so): `*`, `?`, `[...]` and `[!...]`, where a run of `*` is one `*` and a `[` without its
/// `]` is a plain character. The glob crate refuses both (`**` must be a whole path
/// component there, and an open `[` is an error), so a Python configuration would not load.
pub fn name_pattern(pattern: &str) -> Result<glob::Pattern, glob::PatternError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut glob = String::with_capacity(pattern.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                glob.push('*');
                while chars.get(i + 1) == Some(&'*') {
                    i += 1;
                }
            }
            '[' => {
                // fnmatch's set: an optional '!', then a ']' that is part of the set, then
                // up to the next ']'
                let mut end = i + 1;
                if chars.get(end) == Some(&'!') {
                    end += 1;
                }
                if chars.get(end) == Some(&']') {
                    end += 1;
                }
                while chars.get(end).is_some_and(|&c| c != ']') {
                    end += 1;
                }
                if end < chars.len() {
                    glob.extend(&chars[i..=end]);
                    i = end;
                } else {
                    glob.push_str("[[]");
                }
            }
            c => glob.push(c),
        }
        i += 1;
    }
    glob::Pattern::new(&glob)
}

fn globs(field: &'static str, patterns: &[String]) -> Result<Vec<glob::Pattern>, FilterError> {
    patterns
        .iter()
        .map(|p| {
            name_pattern(p).map_err(|e| FilterError {
                field,
                pattern: p.clone(),
                reason: e.msg.to_string(),
            })
        })
        .collect()
}

impl Filter {
    /// Compiles the configured lists.
    pub fn new(cfg: &FilterConfig) -> Result<Self, FilterError> {
        Ok(Filter {
            exclude_rooms: cfg.exclude_rooms.clone(),
            exclude_types: cfg.exclude_types.clone(),
            exclude_names: globs("exclude_names", &cfg.exclude_names)?,
            exclude_categories: cfg.exclude_categories.clone(),
            include_rooms: cfg.include_rooms.clone(),
            include_types: cfg.include_types.clone(),
            include_names: globs("include_names", &cfg.include_names)?,
            include_categories: cfg.include_categories.clone(),
        })
    }

    /// True when the control is exported.
    pub fn allows(&self, c: ControlFacts<'_>) -> bool {
        let in_list =
            |list: &[String], v: Option<&str>| v.is_some_and(|v| list.iter().any(|x| x == v));
        if in_list(&self.exclude_rooms, c.room)
            || self.exclude_types.iter().any(|t| t == c.control_type)
            || self.exclude_names.iter().any(|p| p.matches(c.name))
            || in_list(&self.exclude_categories, c.category)
        {
            return false;
        }
        (self.include_rooms.is_empty() || in_list(&self.include_rooms, c.room))
            && (self.include_types.is_empty()
                || self.include_types.iter().any(|t| t == c.control_type))
            && (self.include_names.is_empty()
                || self.include_names.iter().any(|p| p.matches(c.name)))
            && (self.include_categories.is_empty() || in_list(&self.include_categories, c.category))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        name: &'a str,
        ty: &'a str,
        room: Option<&'a str>,
        cat: Option<&'a str>,
    ) -> ControlFacts<'a> {
        ControlFacts {
            name,
            control_type: ty,
            room,
            category: cat,
        }
    }

    #[test]
    fn table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cfg = FilterConfig {
            exclude_rooms: s(&["Garage"]),
            exclude_types: s(&["Webpage"]),
            exclude_names: s(&["Test*", "?emp"]),
            exclude_categories: s(&["Hidden"]),
            ..FilterConfig::default()
        };
        let f = Filter::new(&cfg).unwrap();
        let cases = [
            (
                facts("Lamp", "Switch", Some("Kitchen"), Some("Lights")),
                true,
            ),
            (
                facts("Lamp", "Switch", Some("Garage"), Some("Lights")),
                false,
            ),
            (facts("Lamp", "Webpage", None, None), false),
            (facts("Test lamp", "Switch", None, None), false),
            (facts("Temp", "InfoOnlyAnalog", None, None), false),
            (facts("Tempo", "InfoOnlyAnalog", None, None), true),
            (facts("Lamp", "Switch", None, Some("Hidden")), false),
            (facts("Lamp", "Switch", None, None), true),
            (facts("lamp", "switch", Some("garage"), None), true), // case-sensitive like the original
        ];
        for (c, want) in cases {
            assert_eq!(f.allows(c), want, "{c:?}");
        }

        let inc = Filter::new(&FilterConfig {
            include_rooms: s(&["Kitchen"]),
            include_names: s(&["L*"]),
            ..FilterConfig::default()
        })
        .unwrap();
        assert!(inc.allows(facts("Lamp", "Switch", Some("Kitchen"), None)));
        assert!(!inc.allows(facts("Lamp", "Switch", None, None)));
        assert!(!inc.allows(facts("Fan", "Switch", Some("Kitchen"), None)));
    }

    #[test]
    fn name_patterns_mean_what_python_fnmatch_makes_of_them() {
        // (pattern, name, fnmatch.fnmatchcase(name, pattern))
        for (pattern, name, matches) in [
            ("Svět**", "Světlo", true),
            ("**Svět", "Velké Svět", true),
            ("a***", "abc", true),
            ("[Lustr", "[Lustr", true),
            ("[Lustr", "L", false),
            ("*[*", "a[b", true),
            ("*[*", "ab", false),
            ("[]]x", "]x", true),
            ("[!]]x", "ax", true),
            ("[!]]x", "]x", false),
            ("[]", "[]", true),
            ("[!", "[!", true),
            ("L[aeiou]mp?", "Lamp1", true),
            ("L[!aeiou]mp", "Lamp", false),
            ("lamp*", "Lamp", false),
            ("a\\b*", "a\\bc", true),
            ("*/*", "in/out", true),
        ] {
            let p = name_pattern(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(p.matches(name), matches, "{pattern:?} on {name:?}");
        }
    }
}
