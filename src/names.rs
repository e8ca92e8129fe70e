//! One spelling per value of every enumerated setting (task, quantizer, normalization, …):
//! `named_enum!` declares the enum with its names once, and derives from them `name()`,
//! `ALL`, `Display`, `FromStr` (whose error lists the allowed names) and serde, so that spec
//! files, `--set`, CSV columns and messages all read and write the same words.

/// `named_enum! { /// docs  pub enum Quantizer { Fp = "fp", Bc = "bc", … } }`
macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $E:ident { $($(#[$vm:meta])* $V:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $E {
            $($(#[$vm])* $V),+
        }

        impl $E {
            /// Every value, in declaration order.
            pub const ALL: &'static [$E] = &[$($E::$V),+];

            /// The value's one spelling (spec files, CSV columns, messages).
            pub fn name(self) -> &'static str {
                match self {
                    $($E::$V => $s),+
                }
            }

            /// "a, b, c": the names a message lists as allowed.
            pub fn allowed() -> String {
                [$($s),+].join(", ")
            }
        }

        /// The first value declared.
        impl Default for $E {
            fn default() -> Self {
                $E::ALL[0]
            }
        }

        impl std::fmt::Display for $E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $E {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($s => Ok($E::$V),)+
                    _ => Err(format!("\"{s}\" is not allowed; allowed: {}", $E::allowed())),
                }
            }
        }

        impl serde::Serialize for $E {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $E {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        pub enum Colour { Red = "red", DarkBlue = "dark_blue" }
    }

    #[test]
    fn names_round_trip_through_every_face() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::DarkBlue]);
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
        assert_eq!("blue".parse::<Colour>().unwrap_err(), "\"blue\" is not allowed; allowed: red, dark_blue");
        let v: Colour = toml::Value::String("dark_blue".into()).try_into().unwrap();
        assert_eq!(v, Colour::DarkBlue);
        assert_eq!(toml::Value::try_from(Colour::Red).unwrap(), toml::Value::String("red".into()));
    }
}
