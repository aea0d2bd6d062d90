//! The order an aggregate's calls run in: a call starts once every call it takes a field from
//! has answered, so independent calls run at once. Checked at config load: the dependencies
//! must form a DAG.

/// Stages of calls: every call of a stage depends only on calls of earlier stages (so a
/// stage's calls may run together). Calls are indices; `deps[i]` are the calls `i` waits for.
/// `Err` holds the calls left on or behind a cycle, in config order.
pub(crate) fn stages(deps: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let mut stage_of: Vec<Option<usize>> = vec![None; deps.len()];
    let mut stages: Vec<Vec<usize>> = Vec::new();
    loop {
        let ready: Vec<usize> = (0..deps.len())
            .filter(|&i| {
                stage_of[i].is_none()
                    && deps[i]
                        .iter()
                        .all(|&d| stage_of.get(d).is_some_and(|s| s.is_some()))
            })
            .collect();
        if ready.is_empty() {
            break;
        }
        for &i in &ready {
            stage_of[i] = Some(stages.len());
        }
        stages.push(ready);
    }
    let left: Vec<usize> = (0..deps.len()).filter(|&i| stage_of[i].is_none()).collect();
    if left.is_empty() {
        Ok(stages)
    } else {
        Err(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_calls_share_a_stage() {
        assert_eq!(
            stages(&[vec![], vec![0], vec![], vec![1, 2]]),
            Ok(vec![vec![0, 2], vec![1], vec![3]])
        );
        assert_eq!(stages(&[]), Ok(vec![]));
    }

    #[test]
    fn cycles_are_found() {
        assert_eq!(stages(&[vec![1], vec![0], vec![]]), Err(vec![0, 1]));
        assert_eq!(stages(&[vec![0]]), Err(vec![0]));
        assert_eq!(
            stages(&[vec![], vec![2], vec![1], vec![2]]),
            Err(vec![1, 2, 3])
        );
    }
}
