//! The in-memory copy of what the hot paths ask: usernames by id and id by username, and
//! which devices are logged in. Loaded from the store at open and updated after each
//! commit, so it never says more than the disk does.

use std::{collections::HashMap, sync::Arc};

use natter_proto::{DeviceId, UserId};

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceState {
    user: UserId,
    active: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    usernames: HashMap<UserId, Arc<str>>,
    ids: HashMap<Arc<str>, UserId>,
    /// Device ids are unique across users, so one map keyed by device.
    devices: HashMap<DeviceId, DeviceState>,
}

impl Cache {
    pub(crate) fn load(store: &Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        let (users, devices) = store.load_all()?;
        for (id, name) in users {
            cache.add_user(id, &name);
        }
        for (user, device, active) in devices {
            cache.set_device(user, device, active);
        }
        Ok(cache)
    }

    pub(crate) fn add_user(&mut self, id: UserId, username: &str) {
        let name: Arc<str> = Arc::from(username);
        self.ids.insert(name.clone(), id);
        self.usernames.insert(id, name);
    }

    pub(crate) fn set_device(&mut self, user: UserId, device: DeviceId, active: bool) {
        self.devices.insert(device, DeviceState { user, active });
    }

    pub(crate) fn username(&self, id: UserId) -> Option<Arc<str>> {
        self.usernames.get(&id).cloned()
    }

    pub(crate) fn user_id(&self, username: &str) -> Option<UserId> {
        self.ids.get(username).copied()
    }

    /// Unknown devices, and devices of another user, are not active.
    pub(crate) fn device_active(&self, user: UserId, device: DeviceId) -> bool {
        self.devices
            .get(&device)
            .is_some_and(|d| d.user == user && d.active)
    }
}
