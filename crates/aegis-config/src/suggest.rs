//! "Did you mean" hints for misspelt keys and names.

/// The candidate closest to `input`, if one is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_lower = input.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&input_lower, &c.to_lowercase()), c))
        // A typo changes about one character in three at most; beyond that the
        // "suggestion" is a different word.
        .filter(|(distance, c)| {
            let close = *distance <= (input.len().max(c.len()) / 3).max(1);
            let truncated = input_lower.len() >= 4 && c.to_lowercase().starts_with(&input_lower);
            *distance > 0 && (close || truncated)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["host", "port", "allow_external_bind", "base_path"];
        assert_eq!(did_you_mean("prot", keys), Some("port"));
        assert_eq!(did_you_mean("allow_extrenal_bind", keys), Some("allow_external_bind"));
        assert_eq!(did_you_mean("basepath", keys), Some("base_path"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
        assert_eq!(
            did_you_mean("retires", ["retries", "retry_from", "retry_delay"]),
            Some("retries")
        );
        assert_eq!(did_you_mean("run.exploded", ["run.cancelled", "run.queued"]), None);
        assert_eq!(did_you_mean("has_failure", ["has_failures", "always"]), Some("has_failures"));
    }
}
