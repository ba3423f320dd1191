//! `[phoenix_pubsub]`: join a Phoenix application's Redis PubSub as one
//! more node.

use crate::config::config_section;

/// The longest atom Erlang accepts, in characters (a node name is an atom).
const ATOM_MAX_CHARS: usize = 255;

/// The most broadcasts waiting for the bridge to publish them to the app.
pub const PUBLISH_QUEUE: usize = 65_536;

config_section! {
    /// `[phoenix_pubsub]`: speak the `phoenix_pubsub_redis` adapter's
    /// format on the app's Redis channel, so the app's broadcasts reach
    /// Cinder's clients and Cinder's broadcasts reach the app's.
    pub struct PhoenixPubSubConfig {
        /// The app's Redis (`redis://host:port/db`); set, it turns the
        /// bridge on.
        pub redis: Option<String> = None,
        /// The app's PubSub name (`MyApp.PubSub`); its channel is
        /// `phx:Elixir.MyApp.PubSub.Adapter`.
        pub name: Option<String> = None,
        /// This node's name among the app's nodes; unique. With `[cluster]`,
        /// the cluster node's name (the default then).
        pub node_name: Option<String> = None,
        /// 0–9, as the adapter's option: how Cinder compresses the terms it
        /// publishes (0: not at all).
        pub compression_level: u32 = 0,
        /// Send Cinder's broadcasts to the app; `false`: receive only.
        pub publish: bool = true,
    }
}

impl PhoenixPubSubConfig {
    /// Whether the bridge is on.
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// The node name the bridge uses: its own, or with `[cluster]` the
    /// cluster node's (`cluster_node`: its resolved name when the cluster
    /// is on), which its own must then equal — a Cinder node tells the
    /// app's echo of another Cinder node's broadcast (delivered already,
    /// through the cluster) by that node's cluster name.
    pub fn node_name_with(&self, cluster_node: Option<&str>) -> Result<String, String> {
        match (self.node_name.as_deref(), cluster_node) {
            (Some(own), Some(cluster)) if own != cluster => Err(format!(
                "phoenix_pubsub.node_name must be the cluster node's name ({cluster:?}) when [cluster] is on; leave it out to use it"
            )),
            (Some(name), _) | (None, Some(name)) => Ok(name.to_string()),
            (None, None) => Err("phoenix_pubsub.node_name must be set: this node's name among the app's nodes".into()),
        }
    }

    /// Checks the values; the error names the key. (Whether a node name
    /// is needed depends on `[cluster]`, which flags may turn on: that is
    /// checked at start, by [`Self::node_name_with`].)
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let Some(url) = &self.redis else {
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            return Err((
                "phoenix_pubsub.redis",
                "must be a redis:// (or unix://) URL".into(),
            ));
        }
        let name = self.name.as_deref().unwrap_or_default();
        let valid_name = !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
        if !valid_name {
            return Err((
                "phoenix_pubsub.name",
                "must be the app's PubSub module name, e.g. \"MyApp.PubSub\"".into(),
            ));
        }
        if let Some(node) = &self.node_name {
            if node.is_empty() || node.chars().count() > ATOM_MAX_CHARS {
                return Err((
                    "phoenix_pubsub.node_name",
                    format!("must be 1 to {ATOM_MAX_CHARS} characters (an Erlang atom)"),
                ));
            }
        }
        self.check_compression()
    }

    fn check_compression(&self) -> Result<(), (&'static str, String)> {
        if self.compression_level > 9 {
            return Err(("phoenix_pubsub.compression_level", "must be 0 to 9".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(name: &str, node: Option<&str>) -> PhoenixPubSubConfig {
        PhoenixPubSubConfig {
            redis: Some("redis://127.0.0.1:6379".into()),
            name: Some(name.into()),
            node_name: node.map(str::to_string),
            ..PhoenixPubSubConfig::default()
        }
    }

    #[test]
    fn values_are_checked_and_the_error_names_the_key() {
        assert!(PhoenixPubSubConfig::default().validate().is_ok());
        assert!(on("MyApp.PubSub", Some("cinder-1")).validate().is_ok());
        for bad in ["", "My App", "MyApp.", ".X"] {
            assert_eq!(
                on(bad, Some("c")).validate().unwrap_err().0,
                "phoenix_pubsub.name"
            );
        }
        let long = "x".repeat(256);
        assert_eq!(
            on("A", Some(&long)).validate().unwrap_err().0,
            "phoenix_pubsub.node_name"
        );
        let mut compressed = on("A", Some("c"));
        compressed.compression_level = 10;
        assert_eq!(
            compressed.validate().unwrap_err().0,
            "phoenix_pubsub.compression_level"
        );
        let mut url = on("A", Some("c"));
        url.redis = Some("http://x".into());
        assert_eq!(url.validate().unwrap_err().0, "phoenix_pubsub.redis");
    }

    #[test]
    fn the_node_name_is_its_own_or_the_cluster_nodes() {
        assert_eq!(on("A", Some("own")).node_name_with(None).unwrap(), "own");
        assert!(on("A", None).node_name_with(None).is_err());
        assert_eq!(
            on("A", None).node_name_with(Some("node-a")).unwrap(),
            "node-a"
        );
        assert_eq!(
            on("A", Some("node-a"))
                .node_name_with(Some("node-a"))
                .unwrap(),
            "node-a"
        );
        assert!(on("A", Some("other"))
            .node_name_with(Some("node-a"))
            .is_err());
    }
}
