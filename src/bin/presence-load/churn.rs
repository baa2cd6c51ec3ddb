//! A control room's traffic: changes to users seeded with [`crate::seed`], written through
//! the router's own store and broker as routers would write them, so every router on the
//! Redis hands them to its dashboards. What the dashboard page's measurement feeds it
//! (docs/BENCHMARKS.md, "Dashboard page").
//!
//! Each change is one of: a status (online → away → dnd → online), a disconnect or a
//! reconnect, the start of typing (ended 2 s later) or of a talk (ended 3 s later, one
//! talker per group). Ends count as changes too; the rate is of all of them together.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    time::Duration,
};

use presence_router::{
    engine::{Broker, PresenceStore, SignalStore},
    id::Id,
    presence::Mode,
    protocol::{indicator_frame, payload::IndicatorKind},
    transient::{Audience, Delivery},
};
use tokio::time::{Instant, MissedTickBehavior};

use crate::seed::{self, Writer};

const TYPING_FOR: Duration = Duration::from_secs(2);
const TALKING_FOR: Duration = Duration::from_secs(3);
/// Changes go out in batches this often.
const TICK: Duration = Duration::from_millis(10);
/// The seeded sessions' lease, as `seed` gives it by default.
const LEASE: Duration = Duration::from_secs(3600);

pub struct Options {
    pub redis_port: u16,
    pub users: usize,
    pub groups: usize,
    pub rate: u64,
    pub seconds: f64,
}

/// xorshift64*: reproducible runs without a dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    statuses: u64,
    disconnects: u64,
    reconnects: u64,
    starts: u64,
    ends: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.statuses + self.disconnects + self.reconnects + self.starts + self.ends
    }
}

struct Churn {
    writer: Writer,
    groups: usize,
    connected: Vec<bool>,
    /// Each user's status: 0 online, 1 away, 2 dnd.
    modes: Vec<u8>,
    /// Users with a live indicator (they are not disconnected meanwhile).
    signalling: HashSet<usize>,
    /// Groups with a talker.
    talking: HashSet<usize>,
    /// When each live indicator ends: (at, user, kind).
    ends: BinaryHeap<Reverse<(Instant, usize, u8)>>,
    tally: Tally,
}

const KINDS: [IndicatorKind; 2] = [IndicatorKind::Typing, IndicatorKind::Talking];

pub async fn run(options: Options) -> anyhow::Result<()> {
    let writer = Writer::connect(options.redis_port, LEASE).await?;
    let mut churn = Churn {
        writer,
        groups: options.groups,
        connected: vec![true; options.users],
        modes: vec![0; options.users],
        signalling: HashSet::new(),
        talking: HashSet::new(),
        ends: BinaryHeap::new(),
        tally: Tally::default(),
    };
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(options.seconds);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut due = 0.0;
    while Instant::now() < until {
        ticks.tick().await;
        due += options.rate as f64 * TICK.as_secs_f64();
        let now = Instant::now();
        while due >= 1.0 && churn.ends.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
            let Some(Reverse((_, user, kind))) = churn.ends.pop() else { break };
            churn.indicate(user, KINDS[usize::from(kind)], false).await?;
            due -= 1.0;
        }
        while due >= 1.0 {
            let user = random.below(options.users);
            let roll = random.below(100);
            if churn.change(user, roll, now).await? {
                due -= 1.0;
            }
        }
    }
    // What is still live ends, so the routers are left quiet.
    while let Some(Reverse((_, user, kind))) = churn.ends.pop() {
        churn.indicate(user, KINDS[usize::from(kind)], false).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let t = &churn.tally;
    println!(
        "churn: {} changes in {seconds:.1} s ({:.0}/s): {} statuses, {} disconnects, {} reconnects, {} indicator starts, {} ends",
        t.total(),
        t.total() as f64 / seconds,
        t.statuses,
        t.disconnects,
        t.reconnects,
        t.starts,
        t.ends
    );
    Ok(())
}

impl Churn {
    /// One random change to `user` (`roll` out of 100 picks which); false when none
    /// applied (the caller picks again).
    async fn change(&mut self, user: usize, roll: usize, now: Instant) -> anyhow::Result<bool> {
        let session = seed::session(user, self.groups)?;
        let writer = &self.writer;
        if !self.connected[user] {
            writer.publish(writer.store.connect(&session).await?.update).await?;
            self.connected[user] = true;
            self.tally.reconnects += 1;
            return Ok(true);
        }
        let group = (self.groups > 0).then(|| user % self.groups);
        match roll {
            0..45 => {
                self.modes[user] = (self.modes[user] + 1) % 3;
                let mode = [Mode::Auto, Mode::Away, Mode::Dnd][usize::from(self.modes[user])];
                writer.publish(writer.store.set_status(&session, mode, None).await?).await?;
                self.tally.statuses += 1;
            }
            45..70 if !self.signalling.contains(&user) => {
                writer.publish(writer.store.disconnect(&session).await?).await?;
                self.connected[user] = false;
                self.tally.disconnects += 1;
            }
            70..90 if group.is_some() && !self.signalling.contains(&user) => {
                self.indicate(user, IndicatorKind::Typing, true).await?;
                self.ends.push(Reverse((now + TYPING_FOR, user, 0)));
            }
            90.. if group.is_some_and(|g| !self.talking.contains(&g)) && !self.signalling.contains(&user) => {
                self.indicate(user, IndicatorKind::Talking, true).await?;
                self.ends.push(Reverse((now + TALKING_FOR, user, 1)));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Starts or ends `user`'s indicator in its group as a router does: the store's copy,
    /// then the INDICATOR_UPDATE to the group's members and dashboards on every router.
    async fn indicate(&mut self, user: usize, kind: IndicatorKind, active: bool) -> anyhow::Result<()> {
        let (id, group_n) = (Id::parse(&crate::fleet::user(user))?, user % self.groups);
        let group = Id::parse(&seed::group(group_n))?;
        let ttl = active.then_some(TALKING_FOR * 2);
        self.writer.store.set_indicator(&group, &id, kind, ttl).await?;
        let frame = indicator_frame(&group, &id, kind, active);
        self.writer.broker.relay(&Delivery {
            audience: Audience::Group { group, dashboards: true },
            except: Some(id),
            frame,
        });
        if active {
            self.signalling.insert(user);
            self.tally.starts += 1;
        } else {
            self.signalling.remove(&user);
            self.tally.ends += 1;
        }
        if kind == IndicatorKind::Talking {
            if active {
                self.talking.insert(group_n)
            } else {
                self.talking.remove(&group_n)
            };
        }
        Ok(())
    }
}
