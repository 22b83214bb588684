-- Argo CD health check for identity.dbx-operator.io/DatabricksIdentityGrant.
-- Healthy: Ready. Progressing: the operator has not judged this generation yet, or work is
-- retried on its own (Reconciling). Degraded: a person must act (Stalled). Suspended:
-- managementPolicy Observe with changes planned (nothing is written to Azure).
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end
local function say(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to judge the latest spec"
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = say(stalled)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = say(reconciling)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  local inSync = condition("InSync")
  if obj.spec ~= nil and obj.spec.managementPolicy == "Observe" and (inSync == nil or inSync.status ~= "True") then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = say(ready)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
