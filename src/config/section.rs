//! The shape every config section shares: a struct of keys, each with a
//! default, read from TOML with every key optional and unknown keys refused.

/// Declares a config section: the struct, its `Default` (each key's default
/// written next to the key, so the two cannot drift apart) and its TOML
/// form (`#[serde(default, deny_unknown_fields)]`).
///
/// ```text
/// config_section! {
///     /// `[example]`: what the section configures.
///     pub struct ExampleConfig {
///         /// What the key does.
///         pub timeout_ms: u64 = 3_000,
///     }
/// }
/// ```
macro_rules! config_section {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(
                $(#[$key_attr:meta])*
                pub $key:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$key_attr])*
                pub $key: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($key: $default,)*
                }
            }
        }
    };
}

pub(crate) use config_section;
