//! [`ClassCounts`]: how many samples each class has, printed at the start of every run so a wrong data root
//! (classes `train`, `val`) or a missing or tiny class is seen before any training.

use super::source::ImageSource;

/// Classes listed by name in [`ClassCounts::summary`]; beyond this the line names the smallest and largest.
const LISTED_CLASSES: usize = 20;

/// The largest/smallest class size ratio from which [`ClassCounts::warnings`] reports an imbalance.
pub const IMBALANCE_RATIO: usize = 10;

/// Samples per class of one source, in label order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCounts {
    /// `(class name, samples)` in label order.
    pub classes: Vec<(String, usize)>,
}

impl ClassCounts {
    /// Counts the labels of `source` (labels only: nothing is decoded). Labels outside the class list are
    /// not counted (the model check reports them).
    pub fn of(source: &dyn ImageSource) -> Self {
        let names = source.class_names();
        let mut counts = vec![0usize; names.len()];
        for i in 0..source.len() {
            let label = source.label(i);
            if let Some(c) = usize::try_from(label).ok().and_then(|l| counts.get_mut(l)) {
                *c += 1;
            }
        }
        ClassCounts {
            classes: names.iter().cloned().zip(counts).collect(),
        }
    }

    /// Samples in all classes.
    pub fn total(&self) -> usize {
        self.classes.iter().map(|(_, n)| n).sum()
    }

    /// `5 images in 2 classes: cat 3, dog 2` (with more than 20 classes, the first 20 and the smallest and
    /// largest class).
    pub fn summary(&self) -> String {
        let listed: Vec<String> = self
            .classes
            .iter()
            .take(LISTED_CLASSES)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let mut line = format!(
            "{} images in {} classes: {}",
            self.total(),
            self.classes.len(),
            listed.join(", ")
        );
        if self.classes.len() > LISTED_CLASSES {
            let smallest = self.classes.iter().min_by_key(|(_, n)| *n);
            let largest = self.classes.iter().max_by_key(|(_, n)| *n);
            if let (Some((s, sn)), Some((l, ln))) = (smallest, largest) {
                line.push_str(&format!(
                    ", … ({} more; smallest {s} {sn}, largest {l} {ln})",
                    self.classes.len() - LISTED_CLASSES
                ));
            }
        }
        line
    }

    /// Warnings about the counts: classes with no samples, and a largest class at least
    /// [`IMBALANCE_RATIO`] times the smallest non-empty one.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let empty: Vec<&str> = self
            .classes
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(name, _)| name.as_str())
            .collect();
        if !empty.is_empty() {
            out.push(format!(
                "{} class(es) have no images: {}",
                empty.len(),
                empty.join(", ")
            ));
        }
        let non_empty = self.classes.iter().filter(|(_, n)| *n > 0);
        let smallest = non_empty.clone().min_by_key(|(_, n)| *n);
        let largest = non_empty.max_by_key(|(_, n)| *n);
        if let (Some((s, sn)), Some((l, ln))) = (smallest, largest) {
            if *ln >= IMBALANCE_RATIO * sn {
                out.push(format!(
                    "the classes are strongly imbalanced: {l} has {ln} images, {s} only {sn}; accuracy \
                     will mostly reflect the large classes"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(sizes: &[usize]) -> ClassCounts {
        ClassCounts {
            classes: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (format!("c{i}"), n))
                .collect(),
        }
    }

    #[test]
    fn many_classes_list_the_first_twenty_and_the_extremes() {
        let sizes: Vec<usize> = (0..25).map(|i| if i == 23 { 1 } else { 5 + i }).collect();
        let line = counts(&sizes).summary();
        let total: usize = sizes.iter().sum();
        assert!(
            line.starts_with(&format!("{total} images in 25 classes: c0 5, c1 6,")),
            "{line}"
        );
        assert!(
            line.contains("c19 24, … (5 more; smallest c23 1, largest c24 29)"),
            "{line}"
        );
        assert!(!line.contains("c20 "), "{line}");
    }

    #[test]
    fn balanced_classes_give_no_warning() {
        assert!(counts(&[5, 9, 7]).warnings().is_empty());
        assert_eq!(counts(&[10, 1]).warnings().len(), 1);
        assert!(counts(&[9, 1]).warnings().is_empty());
    }
}
