//! The in-memory copy of what the hot paths ask: usernames by id and id by username,
//! which accounts are disabled, and which devices are logged in. Loaded from the store at
//! open and updated after each commit, so it never says more than the disk does.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use natter_proto::{DeviceId, UserId};

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceState {
    user: UserId,
    active: bool,
}

/// Whether a device may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    Active,
    /// Logged in, but an administrator disabled the account.
    Disabled,
    /// Unknown, of another user, or logged out.
    Inactive,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    usernames: HashMap<UserId, Arc<str>>,
    ids: HashMap<Arc<str>, UserId>,
    /// Device ids are unique across users, so one map keyed by device.
    devices: HashMap<DeviceId, DeviceState>,
    /// Accounts an administrator disabled (few).
    disabled: HashSet<UserId>,
}

impl Cache {
    pub(crate) fn load(store: &Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        let (users, devices) = store.load_all()?;
        for user in users {
            cache.add_user(user.id, &user.username);
            cache.set_disabled(user.id, user.disabled);
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

    /// Forgets a deleted user and its devices.
    pub(crate) fn remove_user(&mut self, id: UserId, devices: &[DeviceId]) {
        if let Some(name) = self.usernames.remove(&id)
            && self.ids.get(&name) == Some(&id)
        {
            self.ids.remove(&name);
        }
        for device in devices {
            if self.devices.get(device).is_some_and(|d| d.user == id) {
                self.devices.remove(device);
            }
        }
        self.disabled.remove(&id);
    }

    pub(crate) fn set_device(&mut self, user: UserId, device: DeviceId, active: bool) {
        self.devices.insert(device, DeviceState { user, active });
    }

    pub(crate) fn set_disabled(&mut self, user: UserId, disabled: bool) {
        if disabled {
            self.disabled.insert(user);
        } else {
            self.disabled.remove(&user);
        }
    }

    pub(crate) fn is_disabled(&self, user: UserId) -> bool {
        self.disabled.contains(&user)
    }

    pub(crate) fn username(&self, id: UserId) -> Option<Arc<str>> {
        self.usernames.get(&id).cloned()
    }

    pub(crate) fn user_id(&self, username: &str) -> Option<UserId> {
        self.ids.get(username).copied()
    }

    pub(crate) fn standing(&self, user: UserId, device: DeviceId) -> Standing {
        match self.devices.get(&device) {
            // A device whose user is gone (deleted while it logged in) is not active.
            Some(d) if d.user == user && d.active && self.usernames.contains_key(&user) => {
                if self.disabled.contains(&user) {
                    Standing::Disabled
                } else {
                    Standing::Active
                }
            }
            _ => Standing::Inactive,
        }
    }

    /// Unknown devices, devices of another user, and devices of a disabled account are
    /// not active.
    pub(crate) fn device_active(&self, user: UserId, device: DeviceId) -> bool {
        self.standing(user, device) == Standing::Active
    }
}
