//! The model input size: `N` (square) or `HxW` (e.g. `48x192` for a text-line
//! classifier). Written to `config.toml` as an integer when square (the form
//! older run directories use) and as `"HxW"` otherwise.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Height and width of the images fed to the model, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSize {
    pub height: u32,
    pub width: u32,
}

impl ImageSize {
    pub fn square(size: u32) -> Self {
        ImageSize {
            height: size,
            width: size,
        }
    }

    pub fn is_square(&self) -> bool {
        self.height == self.width
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_square() {
            write!(f, "{}", self.height)
        } else {
            write!(f, "{}x{}", self.height, self.width)
        }
    }
}

impl FromStr for ImageSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected N or HxW (e.g. 224 or 48x192), got '{s}'");
        let number = |t: &str| t.trim().parse::<u32>().map_err(|_| bad());
        match s.split_once(['x', 'X', '×']) {
            Some((h, w)) => Ok(ImageSize {
                height: number(h)?,
                width: number(w)?,
            }),
            None => Ok(ImageSize::square(number(s)?)),
        }
    }
}

impl Serialize for ImageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_square() {
            s.serialize_u32(self.height)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Square(u32),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Square(n) => Ok(ImageSize::square(n)),
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_square_and_rectangular_sizes() {
        assert_eq!("96".parse::<ImageSize>(), Ok(ImageSize::square(96)));
        let r = ImageSize {
            height: 48,
            width: 192,
        };
        assert_eq!("48x192".parse::<ImageSize>(), Ok(r));
        assert_eq!("48X192".parse::<ImageSize>(), Ok(r));
        assert_eq!("48×192".parse::<ImageSize>(), Ok(r));
        for bad in ["", "x", "48x", "ax3", "-4", "4x4x4", "96.5"] {
            let e = bad.parse::<ImageSize>().unwrap_err();
            assert!(e.contains("expected N or HxW"), "{bad}: {e}");
        }
    }

    #[test]
    fn toml_round_trip_keeps_the_integer_form_for_squares() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct C {
            image_size: ImageSize,
        }
        for (c, text) in [
            (
                C {
                    image_size: ImageSize::square(96),
                },
                "image_size = 96\n",
            ),
            (
                C {
                    image_size: ImageSize {
                        height: 48,
                        width: 192,
                    },
                },
                "image_size = \"48x192\"\n",
            ),
        ] {
            let written = toml::to_string(&c).unwrap();
            assert_eq!(written, text);
            assert_eq!(toml::from_str::<C>(&written).unwrap(), c);
        }
        let err = toml::from_str::<C>("image_size = \"wide\"\n").unwrap_err();
        assert!(err.to_string().contains("expected N or HxW"), "{err}");
    }
}
