//! Presence across shards with raw clients: every member converges on the
//! same state from `presence_state` + `presence_diff`, multi-tab keys keep
//! one meta per connection, leaves reach everyone, the HTTP view agrees, and
//! joins of one loop turn leave as one diff.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use serde_json::Value;

const ROUTES: &str = r#"
[[channel]]
pattern = "lobby:*"
join = "public"
presence = true
presence_key = "user_id"
"#;

/// A member's view, maintained as the JS helper does (joins, then leaves by ref).
#[derive(Default)]
struct View {
    members: BTreeMap<String, BTreeSet<String>>,
}

impl View {
    fn apply(&mut self, joins: &Value, leaves: &Value) {
        for (key, presence) in joins.as_object().unwrap() {
            let refs = self.members.entry(key.clone()).or_default();
            for meta in presence["metas"].as_array().unwrap() {
                refs.insert(meta["phx_ref"].as_str().unwrap().to_string());
            }
        }
        for (key, presence) in leaves.as_object().unwrap() {
            if let Some(refs) = self.members.get_mut(key) {
                for meta in presence["metas"].as_array().unwrap() {
                    refs.remove(meta["phx_ref"].as_str().unwrap());
                }
                if refs.is_empty() {
                    self.members.remove(key);
                }
            }
        }
    }

    /// Key → number of metas.
    fn shape(&self) -> BTreeMap<String, usize> {
        self.members
            .iter()
            .map(|(k, refs)| (k.clone(), refs.len()))
            .collect()
    }
}

struct Member {
    client: Client,
    view: View,
}

impl Member {
    fn join(server: &TestServer, topic: &str, user: &str) -> Member {
        let mut client = server.connect();
        client.send(&format!(
            r#"["1","1","{topic}","phx_join",{{"user_id":"{user}","meta":{{"name":"{user}"}}}}]"#
        ));
        let reply: Value = client.recv_json();
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        let mut member = Member {
            client,
            view: View::default(),
        };
        // Phoenix's order: the reply, the `presence_diff` announcing the
        // joiner (diffs of other shards' members may come first), then a
        // `presence_state`, with the join_ref, that already holds the joiner.
        let mut announced = false;
        let state = loop {
            let message = member.next();
            if message[3] == "presence_state" {
                break message;
            }
            assert_eq!(message[3], "presence_diff", "{message}");
            assert_eq!(message[0], Value::Null, "diffs are broadcasts");
            announced |= message[4]["joins"].get(user).is_some();
        };
        assert!(
            announced,
            "the diff announcing {user} comes before the state"
        );
        assert_eq!(state[0], "1");
        assert!(
            state[4].get(user).is_some(),
            "the state holds the joiner: {state}"
        );
        member
            .view
            .apply(&state[4], &Value::Object(Default::default()));
        member
    }

    fn next(&mut self) -> Value {
        self.client.recv_json()
    }

    /// Reads diffs until the view has `want`, or fails after a while.
    fn converge(&mut self, want: &BTreeMap<String, usize>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while &self.view.shape() != want {
            assert!(
                Instant::now() < deadline,
                "view {:?} never became {want:?}",
                self.view.shape()
            );
            let message = self.next();
            assert_eq!(message[3], "presence_diff", "{message}");
            assert_eq!(message[0], Value::Null, "diffs are broadcasts");
            self.view.apply(&message[4]["joins"], &message[4]["leaves"]);
        }
    }
}

#[test]
fn members_on_four_shards_converge_and_leaves_reach_everyone() {
    let server = TestServer::start_with_shards(4, ROUTES);
    let topic = "lobby:big";
    let mut members: Vec<Member> = (0..24)
        .map(|i| Member::join(&server, topic, &format!("user{}", i % 20)))
        .collect();
    // 20 keys; users 0-3 have two connections (tabs) each.
    let mut want: BTreeMap<String, usize> = (0..20).map(|i| (format!("user{i}"), 1)).collect();
    for i in 0..4 {
        want.insert(format!("user{i}"), 2);
    }
    for member in &mut members {
        member.converge(&want);
    }
    // Close the second tab of user0..3 and everything of user10..19.
    // Highest index first, so removals do not shift the rest.
    for i in (10..24).rev() {
        let mut gone = members.remove(i);
        let _ = gone.client.ws.close(None);
        let _ = gone.client.ws.flush();
    }
    let want: BTreeMap<String, usize> = (0..10).map(|i| (format!("user{i}"), 1)).collect();
    for member in &mut members {
        member.converge(&want);
    }
    // The HTTP view agrees.
    let (status, body) = server.http(&format!(
        "GET /api/presence?topic={topic} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    ));
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&body).unwrap();
    let keys: BTreeSet<&str> = state
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, want.keys().map(|k| k.as_str()).collect());
    assert_eq!(state["user3"]["metas"][0]["name"], "user3");
    let (status, _) =
        server.http("GET /api/presence HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn joins_of_one_loop_turn_leave_as_one_diff() {
    let server = TestServer::start_with_shards(1, ROUTES);
    let mut watcher = Member::join(&server, "lobby:turn", "watcher");
    watcher.converge(&[("watcher".to_string(), 1)].into_iter().collect());
    // 30 clients whose joins are all written before any answer is read, so
    // the shard reads many of them in one turn.
    let mut clients: Vec<Client> = (0..30).map(|_| server.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&format!(
            r#"["1","1","lobby:turn","phx_join",{{"user_id":"u{i}"}}]"#
        ));
    }
    let mut want: BTreeMap<String, usize> = (0..30).map(|i| (format!("u{i}"), 1)).collect();
    want.insert("watcher".into(), 1);
    let before = server.metric("cinder_presence_diffs_total");
    watcher.converge(&want);
    let diffs = server.metric("cinder_presence_diffs_total") - before;
    assert!(diffs <= 30, "{diffs} diffs for 30 joins");
    drop(clients);
}

#[test]
fn a_joiner_sees_its_reply_then_its_diff_then_a_state_holding_it() {
    let server = TestServer::start_with_shards(1, ROUTES);
    let mut alice = server.connect();
    alice.send(r#"["1","1","lobby:order","phx_join",{"user_id":"alice","meta":{"n":1}}]"#);
    let reply: Value = alice.recv_json();
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["status"], "ok");
    let diff: Value = alice.recv_json();
    assert_eq!(
        diff.as_array().unwrap()[..4],
        [
            Value::Null,
            Value::Null,
            "lobby:order".into(),
            "presence_diff".into()
        ]
    );
    assert_eq!(diff[4]["leaves"], serde_json::json!({}));
    let metas = &diff[4]["joins"]["alice"]["metas"];
    assert_eq!(metas.as_array().unwrap().len(), 1, "{diff}");
    assert_eq!(metas[0]["n"], 1);
    let phx_ref = metas[0]["phx_ref"].clone();
    let state: Value = alice.recv_json();
    assert_eq!(
        state.as_array().unwrap()[..4],
        [
            "1".into(),
            Value::Null,
            "lobby:order".into(),
            "presence_state".into()
        ]
    );
    assert_eq!(
        state[4],
        serde_json::json!({"alice": {"metas": [{"n": 1, "phx_ref": phx_ref}]}})
    );
    // A second member: alice gets only the diff, bob the same three frames.
    let mut bob = server.connect();
    bob.send(r#"["1","1","lobby:order","phx_join",{"user_id":"bob"}]"#);
    let reply: Value = bob.recv_json();
    assert_eq!(reply[3], "phx_reply");
    let diff: Value = bob.recv_json();
    assert_eq!(diff[3], "presence_diff");
    assert!(diff[4]["joins"].get("bob").is_some() && diff[4]["joins"].get("alice").is_none());
    let state: Value = bob.recv_json();
    assert_eq!(state[3], "presence_state");
    let keys: Vec<&String> = state[4].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["alice", "bob"]);
    let seen: Value = alice.recv_json();
    assert_eq!(seen[3], "presence_diff");
    assert_eq!(seen[4], diff[4], "everyone gets the same diff");
}

/// A meta reaches every member as the exact JSON the client sent (its own
/// `phx_ref` fields aside): numbers beyond 64 bits stay whole, and the key
/// serde_json's `Value` reads specially (`$serde_json::private::RawValue`)
/// stays an ordinary key instead of replacing the meta with its string.
/// The presence key may be a number of any size, kept as written.
#[test]
fn metas_and_keys_reach_members_as_the_client_wrote_them() {
    let server = TestServer::start_with_shards(1, ROUTES);
    let mut alice = server.connect();
    let meta = r#"{"$serde_json::private::RawValue":"{\"admin\":true}","n":99999999999999999999}"#;
    alice.send(&format!(
        r#"["1","1","lobby:raw","phx_join",{{"user_id":18446744073709551616,"meta":{meta}}}]"#
    ));
    assert_eq!(alice.recv_json()[4]["status"], "ok");
    let diff = alice.recv_text();
    let open = meta.trim_end_matches('}');
    assert!(
        diff.contains(&format!(
            r#""joins":{{"18446744073709551616":{{"metas":[{open},"phx_ref":"#
        )),
        "{diff}"
    );
    let state = alice.recv_text();
    assert!(state.contains(open), "{state}");
    // An update keeps the text as verbatim.
    alice.send(&format!(
        r#"["1","2","lobby:raw","presence_update",{{"meta":{meta}}}]"#
    ));
    let mut got = [alice.recv_text(), alice.recv_text()];
    got.sort();
    assert!(got[0].contains("phx_reply"), "{got:?}");
    assert!(got[1].contains(&format!("[{open},")), "{got:?}");
}
